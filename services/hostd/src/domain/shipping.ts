import { z } from 'zod';
import { ForkyError, IncompatibleError, ValidationError, mapSettled } from '@forky/base';
import { Egress, ImageName, LayerDigest, MountPoint, SnapshotInfo, type TransferResult } from '@forky/contract';
import { imageIdOf, type Image, type ImageCatalog } from '../images.js';
import type { AppLayerStore, LayerStore, PartStore, SnapshotStore, UploadResult } from './ports.js';
import type { SnapshotRecord } from './records.js';

const Part = z.strictObject({ digest: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int().nonnegative() });

/** The image a snapshot was made from: a host that lacks it installs it by id from these parts. */
const ShippedImage = z.strictObject({
  name: ImageName,
  id: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  cmdline: z.string().max(4096),
  kernelVersion: z.string().max(256).optional(),
  kernel: Part,
  initrd: Part,
  /** The base layer's part (the chain's `img-` layer). */
  disk: Part,
  diskVirtualSize: z.number().int().positive(),
});

/** What the object store holds for a snapshot besides its parts: enough to rebuild it anywhere. */
export const ShippingManifest = z.strictObject({
  /** 2 when a part is a chunk map (hosts before chunk maps refuse it: their schema says 1). */
  v: z.union([z.literal(1), z.literal(2)]),
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
  /** Its image, so a host without it can fetch it (a manifest of before images travelled has none). */
  image: ShippedImage.optional(),
});
export type ShippingManifest = z.infer<typeof ShippingManifest>;

export interface ShippingDeps {
  hostId: string;
  parts: PartStore;
  layers: LayerStore;
  appLayers: AppLayerStore;
  snapshots: SnapshotStore;
  images: ImageCatalog;
  timeoutMs: number;
  /** Whether this host holds a snapshot: a lineage parent held here is the base of a transfer. */
  held?: (id: string) => boolean;
}

/** The parent's files, when this host holds it: pages they share need not travel (chunked parts). */
function lineageBase(d: ShippingDeps, parent: string | undefined): { state: string; ram: string } | undefined {
  if (!parent || !d.held?.(parent)) return undefined;
  const f = d.snapshots.files(parent);
  return { state: f.state, ram: f.ram };
}

/** Independent transfers, at most 4 at once, results in order; the first failure fails the whole. */
async function bounded<T>(jobs: Array<() => Promise<T>>): Promise<T[]> {
  const got = await mapSettled(jobs, 4, (j) => j());
  return got.map((g) => {
    if (g.status === 'rejected') throw g.reason;
    return g.value;
  });
}

/**
 * Uploads what the store lacks of a snapshot; parts already there are not sent again. With its
 * `image`, the image's kernel and initrd go too (its disk is the chain's base layer).
 */
export async function publish(d: ShippingDeps, rec: SnapshotRecord, image?: Image): Promise<TransferResult> {
  const t0 = performance.now();
  const files = d.snapshots.files(rec.info.id);
  const base = lineageBase(d, rec.info.parentSnapshot);
  const recApps = rec.apps ?? [];
  type Up = { file: string; known?: () => Promise<{ digest: string; size: number }>; base?: string | undefined };
  const jobs: Up[] = [
    ...rec.chain.map((layer) => ({ file: d.layers.path(layer) })),
    { file: files.state, base: base?.state },
    { file: files.ram, base: base?.ram },
    ...recApps.map((a) => ({
      file: d.appLayers.path(a.layer),
      known: async () => ({ digest: a.layer, size: await d.appLayers.size(a.layer) }),
    })),
    ...(image
      ? [
          { file: image.kernel, known: async () => ({ digest: image.parts.kernel.sha256, size: image.parts.kernel.size }) },
          { file: image.initrd, known: async () => ({ digest: image.parts.initrd.sha256, size: image.parts.initrd.size }) },
        ]
      : []),
  ];
  const up = async (j: Up, withBase: boolean): Promise<UploadResult> =>
    d.parts.upload(j.file, j.known ? await j.known() : undefined, withBase ? j.base : undefined);
  const ups = await bounded(jobs.map((j) => () => up(j, true)));
  const at = (i: number): (typeof ups)[number] => ups[i] as (typeof ups)[number];
  const chain: ShippingManifest['chain'] = rec.chain.map((layer, i) => ({ layer, digest: at(i).digest, size: at(i).size }));
  const state = at(rec.chain.length);
  const ram = at(rec.chain.length + 1);
  const apps: NonNullable<ShippingManifest['apps']> = recApps.map((a, i) => ({ ...a, size: at(rec.chain.length + 2 + i).size }));
  let shipped: ShippingManifest['image'];
  if (image) {
    const k = at(rec.chain.length + 2 + recApps.length);
    const i = at(rec.chain.length + 3 + recApps.length);
    shipped = {
      name: image.name,
      id: image.id,
      cmdline: image.cmdline,
      kernelVersion: image.kernelVersion,
      kernel: { digest: k.digest, size: k.size },
      initrd: { digest: i.digest, size: i.size },
      disk: { digest: image.parts.disk.sha256, size: image.parts.disk.size },
      diskVirtualSize: image.diskVirtualSize,
    };
  }
  const manifest: ShippingManifest = {
    v: ups.some((u) => u.chunked) ? 2 : 1,
    snapshot: rec.info,
    kernelCmdline: rec.kernelCmdline,
    diskVirtualSize: rec.diskVirtualSize,
    chain,
    state: { digest: state.digest, size: state.size },
    ram: { digest: ram.digest, size: ram.size },
    ...(apps.length ? { apps } : {}),
    ...(rec.egress ? { egress: rec.egress } : {}),
    ...(shipped ? { image: shipped } : {}),
  };
  // A sweep that listed before this publish may have taken a base or packs of a part: those go again, whole.
  const broken = (await d.parts.putManifest(rec.info.id, manifest))?.broken ?? [];
  if (broken.length) {
    await bounded(jobs.filter((_, i) => broken.includes(at(i).digest)).map((j) => () => up(j, false)));
    const still = (await d.parts.putManifest(rec.info.id, manifest))?.broken ?? [];
    if (still.length)
      throw new ForkyError('UNAVAILABLE', `snapshot ${rec.info.id}: parts ${still.join(', ')} were swept while it was published`);
  }
  return summary(
    rec.info.id,
    d.hostId,
    ups.map((u) => ({ size: u.size, bytes: u.sentBytes, moved: !u.skipped })),
    t0,
  );
}

/**
 * A manifest's image block must describe the snapshot's image and its own parts: its id is the
 * one its digests and command line make, and its disk is the chain's base. Checked before
 * anything is fetched; a block that lies about a part's bytes is caught when that part arrives.
 */
export function checkImageBlock(m: ShippingManifest): void {
  const b = m.image;
  if (!b) return;
  const bad = (field: string, why: string): never => {
    throw new ValidationError(`snapshot ${m.snapshot.id}: its manifest's ${field} ${why}`, { field });
  };
  if (b.id !== m.snapshot.profile.imageId) bad('image.id', `is ${b.id}, but the snapshot was made from ${m.snapshot.profile.imageId}`);
  if (b.name !== m.snapshot.image) bad('image.name', `is ${b.name}, but the snapshot names ${m.snapshot.image}`);
  const made = imageIdOf({ kernel: b.kernel.digest, initrd: b.initrd.digest, disk: b.disk.digest, cmdline: b.cmdline });
  if (made !== b.id) bad('image.id', `is ${b.id}, but its parts and command line make ${made}`);
  const base = m.chain[0];
  if (!base || base.layer !== `img-${b.disk.digest.slice(0, 32)}` || base.digest !== b.disk.digest)
    bad('image.disk', `(${b.disk.digest}) is not the base layer of the snapshot's disk chain`);
}

/**
 * Rebuilds a published snapshot here. Layers and the image base already present are kept (their
 * names are their identity: frozen layers never change); the rest is fetched and verified. With
 * no local `image`, the manifest's image is installed by id (checkImageBlock first).
 */
export async function fetch(
  d: ShippingDeps,
  m: ShippingManifest,
  image: Image | undefined,
): Promise<{ record: SnapshotRecord; result: TransferResult }> {
  const t0 = performance.now();
  const id = m.snapshot.id;
  if (!image && !m.image) throw new IncompatibleError(`snapshot ${id} names no image host ${d.hostId} could fetch`, { field: 'image' });
  if (image && m.snapshot.profile.imageId !== image.id) {
    throw new IncompatibleError(
      `snapshot ${id} was made from image ${m.snapshot.profile.imageId}; host ${d.hostId} has ${image.name} as ${image.id}`,
      {
        field: 'image',
      },
    );
  }
  type Move = { size: number; bytes: number; moved: boolean };
  const have = new Set(await d.layers.list());
  const files = d.snapshots.files(id);
  const present = await d.snapshots.present(id);
  const base = lineageBase(d, m.snapshot.parentSnapshot);
  checkSizes(m);
  // Layers, state, RAM and app layers are independent; the image (below) needs the base layer.
  const moves: Move[] = await bounded<Move>([
    ...m.chain.map((part) => async (): Promise<Move> => {
      if (have.has(part.layer)) return { size: part.size, bytes: 0, moved: false };
      if (image && part.layer.startsWith('img-') && image.diskSha256 === part.digest) {
        await d.layers.importImage(image);
        return { size: part.size, bytes: 0, moved: false };
      }
      const r = await d.parts.download(part.digest, d.layers.path(part.layer), d.timeoutMs, undefined, part.size);
      await d.layers.freeze(part.layer);
      return { size: part.size, bytes: r.receivedBytes, moved: true };
    }),
    ...(
      [
        [m.state, files.state, present.state, base?.state],
        [m.ram, files.ram, present.ram, base?.ram],
      ] as const
    ).map(([p, dest, there, from]) => async (): Promise<Move> => {
      if (there) return { size: p.size, bytes: 0, moved: false };
      const r = await d.parts.download(p.digest, dest, d.timeoutMs, from, p.size);
      return { size: p.size, bytes: r.receivedBytes, moved: true };
    }),
    ...(m.apps ?? []).map((a) => async (): Promise<Move> => {
      const r = await d.appLayers.ensure(a.layer, d.timeoutMs);
      return { size: a.size, bytes: r.receivedBytes, moved: r.fetched };
    }),
  ]);
  if (m.image) {
    const b = m.image;
    const got = image
      ? undefined
      : await d.images.install(b, d.layers.path((m.chain[0] as { layer: string }).layer), (digest, dest) =>
          d.parts.download(digest, dest, d.timeoutMs),
        );
    moves.push({ size: b.kernel.size, ...(got?.kernel ?? { bytes: 0, moved: false }) });
    moves.push({ size: b.initrd.size, ...(got?.initrd ?? { bytes: 0, moved: false }) });
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

/** A layer's file: its virtual size plus qcow2 metadata (about 1/512 of it, and clusters) with room to spare. */
const layerMax = (virtualSize: number): number => virtualSize + Math.ceil(virtualSize / 64) + (64 << 20);

/** The sizes a manifest gives its parts are what fetches hold maps to: bounded by the snapshot's profile. */
function checkSizes(m: ShippingManifest): void {
  const bad = (field: string, size: number, max: number): never => {
    throw new ValidationError(`snapshot ${m.snapshot.id}: its manifest's ${field} is ${size} bytes, more than ${max}`, { field });
  };
  const ram = m.snapshot.profile.memMiB * 2 ** 20;
  if (m.ram.size > ram) bad('ram.size', m.ram.size, ram);
  if (m.state.size > ram + (64 << 20)) bad('state.size', m.state.size, ram + (64 << 20));
  m.chain.forEach((c, i) => {
    if (c.size > layerMax(m.diskVirtualSize)) bad(`chain[${i}].size`, c.size, layerMax(m.diskVirtualSize));
  });
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
