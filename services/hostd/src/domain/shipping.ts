import { z } from 'zod';
import { IncompatibleError } from '@forky/base';
import { Egress, LayerDigest, MountPoint, SnapshotInfo, type TransferResult } from '@forky/contract';
import type { Image } from '../images.js';
import type { AppLayerStore, LayerStore, PartStore, SnapshotStore } from './ports.js';
import type { SnapshotRecord } from './records.js';

const Part = z.strictObject({ digest: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int().nonnegative() });

/** What the object store holds for a snapshot besides its parts: enough to rebuild it anywhere. */
export const ShippingManifest = z.strictObject({
  v: z.literal(1),
  snapshot: SnapshotInfo,
  kernelCmdline: z.string(),
  diskVirtualSize: z.number().int(),
  chain: z.array(Part.extend({ layer: z.string().regex(/^(img|lyr)-[a-z0-9]{6,64}$/) })),
  state: Part,
  ram: Part,
  /** App disks: each layer is a part under its own digest, fetched into the host's app layers. */
  apps: z
    .array(
      z.strictObject({
        slot: z.number().int().min(0).max(63),
        layer: LayerDigest,
        mount: MountPoint.optional(),
        size: z.number().int().nonnegative(),
      }),
    )
    .optional(),
  /** The egress policy its children start with (a manifest of before policies has none: `internet`). */
  egress: Egress.optional(),
});
export type ShippingManifest = z.infer<typeof ShippingManifest>;

export interface ShippingDeps {
  hostId: string;
  parts: PartStore;
  layers: LayerStore;
  appLayers: AppLayerStore;
  snapshots: SnapshotStore;
  timeoutMs: number;
}

/** Uploads what the store lacks of a snapshot; parts already there are not sent again. */
export async function publish(d: ShippingDeps, rec: SnapshotRecord): Promise<TransferResult> {
  const t0 = performance.now();
  const files = d.snapshots.files(rec.info.id);
  const ups = [];
  const chain: ShippingManifest['chain'] = [];
  for (const layer of rec.chain) {
    const up = await d.parts.upload(d.layers.path(layer));
    ups.push(up);
    chain.push({ layer, digest: up.digest, size: up.size });
  }
  const state = await d.parts.upload(files.state);
  const ram = await d.parts.upload(files.ram);
  ups.push(state, ram);
  const apps: NonNullable<ShippingManifest['apps']> = [];
  for (const a of rec.apps ?? []) {
    const file = d.appLayers.path(a.layer);
    const up = await d.parts.upload(file, { digest: a.layer, size: await d.appLayers.size(a.layer) });
    ups.push(up);
    apps.push({ ...a, size: up.size });
  }
  const manifest: ShippingManifest = {
    v: 1,
    snapshot: rec.info,
    kernelCmdline: rec.kernelCmdline,
    diskVirtualSize: rec.diskVirtualSize,
    chain,
    state: { digest: state.digest, size: state.size },
    ram: { digest: ram.digest, size: ram.size },
    ...(apps.length ? { apps } : {}),
    ...(rec.egress ? { egress: rec.egress } : {}),
  };
  await d.parts.putManifest(rec.info.id, manifest);
  return summary(
    rec.info.id,
    d.hostId,
    ups.map((u) => ({ size: u.size, bytes: u.sentBytes, moved: !u.skipped })),
    t0,
  );
}

/**
 * Rebuilds a published snapshot here. Layers and the image base already present are kept (their
 * names are their identity: frozen layers never change); the rest is fetched and verified.
 */
export async function fetch(
  d: ShippingDeps,
  m: ShippingManifest,
  image: Image,
): Promise<{ record: SnapshotRecord; result: TransferResult }> {
  const t0 = performance.now();
  const id = m.snapshot.id;
  if (m.snapshot.profile.imageId !== image.id) {
    throw new IncompatibleError(
      `snapshot ${id} was made from image ${m.snapshot.profile.imageId}; host ${d.hostId} has ${image.name} as ${image.id}`,
      {
        field: 'image',
      },
    );
  }
  const moves: Array<{ size: number; bytes: number; moved: boolean }> = [];
  const have = new Set(await d.layers.list());
  for (const part of m.chain) {
    if (have.has(part.layer)) {
      moves.push({ size: part.size, bytes: 0, moved: false });
    } else if (part.layer.startsWith('img-') && image.diskSha256 === part.digest) {
      await d.layers.importImage(image);
      moves.push({ size: part.size, bytes: 0, moved: false });
    } else {
      const r = await d.parts.download(part.digest, d.layers.path(part.layer), d.timeoutMs);
      await d.layers.freeze(part.layer);
      moves.push({ size: part.size, bytes: r.receivedBytes, moved: true });
    }
  }
  const files = d.snapshots.files(id);
  const present = await d.snapshots.present(id);
  for (const [p, dest, there] of [
    [m.state, files.state, present.state],
    [m.ram, files.ram, present.ram],
  ] as const) {
    if (there) {
      moves.push({ size: p.size, bytes: 0, moved: false });
      continue;
    }
    const r = await d.parts.download(p.digest, dest, d.timeoutMs);
    moves.push({ size: p.size, bytes: r.receivedBytes, moved: true });
  }
  for (const a of m.apps ?? []) {
    const r = await d.appLayers.ensure(a.layer, d.timeoutMs);
    moves.push({ size: a.size, bytes: r.receivedBytes, moved: r.fetched });
  }
  const record: SnapshotRecord = {
    ...(m.apps?.length ? { apps: m.apps.map(({ size: _s, ...a }) => a) } : {}),
    info: { ...m.snapshot, host: d.hostId },
    origin: m.snapshot.host,
    chain: m.chain.map((c) => c.layer),
    kernelCmdline: m.kernelCmdline,
    diskVirtualSize: m.diskVirtualSize,
    ...(m.egress ? { egress: m.egress } : {}),
  };
  return { record, result: summary(id, d.hostId, moves, t0) };
}

function summary(id: string, host: string, moves: Array<{ size: number; bytes: number; moved: boolean }>, t0: number): TransferResult {
  return {
    id,
    host,
    parts: moves.length,
    moved: moves.filter((x) => x.moved).length,
    bytes: moves.reduce((a, x) => a + x.bytes, 0),
    nominalBytes: moves.reduce((a, x) => a + x.size, 0),
    ms: Math.round((performance.now() - t0) * 10) / 10,
  };
}
