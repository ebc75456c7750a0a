import { ForkyError, IncompatibleError, NotFoundError, asForkyError } from '@forky/base';
import type { TransferResult } from '@forky/contract';
import type { Image } from '../../images.js';
import { checkProfile } from '../admission.js';
import { round, type Host } from '../host.js';
import { withRollback } from '../rollback.js';
import { ShippingManifest, checkImageBlock, fetch as fetchParts, publish as publishParts, type ShippingDeps } from '../shipping.js';
import { collectImages } from './images.js';

/**
 * Deps for one transfer whose lineage parent is `parent`: held here, it is the transfer's base
 * and is kept in use (snapUsers: no deletion, no expiry) until `release`; else there is no base.
 */
function shippingWith(host: Host, parent: string | undefined): { deps: ShippingDeps; release: () => void } {
  const deps = shipping(host);
  if (!parent || !host.snaps.has(parent)) return { deps: { ...deps, held: () => false }, release: () => undefined };
  host.snapUsers.set(parent, (host.snapUsers.get(parent) ?? 0) + 1);
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    host.snapUsers.set(parent, (host.snapUsers.get(parent) ?? 1) - 1);
  };
  return { deps: { ...deps, held: (id) => id === parent }, release };
}

function shipping(host: Host): ShippingDeps {
  const { d } = host;
  if (!d.parts) throw new ForkyError('UNAVAILABLE', `host ${d.hostId} has no object store to ship snapshots through`);
  return {
    hostId: d.hostId,
    parts: d.parts,
    layers: d.layers,
    appLayers: d.appLayers,
    snapshots: d.snapshots,
    images: d.images,
    timeoutMs: 10 * 60_000,
    held: (id) => host.snaps.has(id),
  };
}

/** How long a fetch waits for a publish under way elsewhere (a publish's own deadline); the store stops sooner if the caller gives up. */
const WAIT_MS = 10 * 60_000;

/** A manifest that is not JSON counts as none. */
const notPublished =
  (id: string) =>
  (e: unknown): never => {
    if (e instanceof SyntaxError) throw new ForkyError('NOT_FOUND', `snapshot ${id} has no valid manifest in the object store`);
    throw e;
  };

/** Publishes under way, per host and snapshot: a second caller joins the first's upload. */
const publishing = new WeakMap<Host, Map<string, Promise<TransferResult>>>();

/**
 * Puts this host's snapshot in the object store (only the parts it lacks), with its image's parts.
 * A call while one is under way joins it (one upload; its failure is every caller's, and the
 * next call starts afresh).
 */
export function publish(host: Host, id: string): Promise<TransferResult> {
  host.snap(id);
  let runs = publishing.get(host);
  if (!runs) publishing.set(host, (runs = new Map()));
  const running = runs.get(id);
  if (running) return running;
  const p = publishOnce(host, id).finally(() => {
    if (runs.get(id) === p) runs.delete(id);
  });
  runs.set(id, p);
  return p;
}

function publishOnce(host: Host, id: string): Promise<TransferResult> {
  return host.lock.run(id, async () => {
    const rec = host.snap(id);
    // Without its image here, it is published as before images travelled: hosts that have the image can still fetch it.
    const image = await host.d.images.byId(rec.info.profile.imageId, rec.info.image).catch((err: unknown) => {
      host.log.warn({ err, snapshot: id }, 'image of the snapshot not found here: published without it');
      return undefined;
    });
    const { deps, release } = shippingWith(host, rec.info.parentSnapshot);
    const { parts } = deps;
    try {
      await parts.markPublishing(id, host.hostId);
      const r = await publishParts(deps, rec, image).catch(async (e: unknown) => {
        const fe = asForkyError(e);
        // The fetches waiting for this publish fail with it; the marker goes.
        await parts.endPublishing(id, host.hostId, { code: fe.code, message: fe.message }).catch((err: unknown) => {
          host.log.warn({ err, snapshot: id }, 'publish marker not ended');
        });
        throw e;
      });
      await parts
        .endPublishing(id, host.hostId)
        .catch((err: unknown) => host.log.warn({ err, snapshot: id }, 'publish marker not removed'));
      if (!rec.published) {
        // Other hosts may fork it from now on: retention keeps it (retention.ts).
        rec.published = true;
        await host.d.records.saveSnapshot(rec);
      }
      return r;
    } finally {
      release();
    }
  });
}

/**
 * The image a fetched snapshot restores from, if this host has it (by id); undefined when the
 * manifest carries the image to install. A manifest without one needs the named image as before.
 */
async function localImage(host: Host, m: ShippingManifest): Promise<Image | undefined> {
  const imageId = m.snapshot.profile.imageId;
  try {
    return await host.d.images.byId(imageId, m.snapshot.image);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
    if (m.image) return undefined;
  }
  const named = await host.d.images.get(m.snapshot.image);
  throw new IncompatibleError(
    `snapshot ${m.snapshot.id} was made from image ${imageId}; host ${host.hostId} has ${named.name} as ${named.id}`,
    { field: 'image' },
  );
}

/** Brings a published snapshot here (only the parts this host lacks). */
export function fetch(host: Host, id: string): Promise<TransferResult> {
  return host.lock.run(id, async () => {
    const t0 = performance.now();
    if (host.snaps.has(id))
      return { id, host: host.hostId, parts: 0, moved: 0, bytes: 0, nominalBytes: 0, ms: round(performance.now() - t0) };
    // The object store is writable by every host: a manifest that does not parse is no snapshot.
    // A publish under way is waited for (with the transfer's deadline), not taken for none.
    const raw = await shipping(host).parts.waitManifest(id, WAIT_MS).catch(notPublished(id));
    const parsed = ShippingManifest.safeParse(raw);
    if (!parsed.success) throw new ForkyError('NOT_FOUND', `snapshot ${id} has no valid manifest in the object store`);
    const m = parsed.data;
    checkImageBlock(m);
    checkProfile(host, m.snapshot.profile, { id: m.snapshot.profile.imageId });
    // From here until the record is kept, the image is not collected (another snapshot of it may go meanwhile).
    const unpinImage = host.d.images.pin(m.snapshot.profile.imageId);
    const image = await localImage(host, m).catch((e: unknown) => {
      unpinImage();
      throw e;
    });
    // Fetched layers belong to no chain until the snapshot is registered: keep them from GC.
    for (const p of m.chain) host.pendingLayers.add(p.layer);
    const unpin = host.apps.pin((m.apps ?? []).map((a) => a.layer));
    try {
      return await withRollback(host.log, { snapshot: id }, async (rb) => {
        rb.push('remove what was fetched', () => host.d.snapshots.remove(id));
        const { deps, release } = shippingWith(host, m.snapshot.parentSnapshot);
        const { record, result } = await fetchParts(deps, m, image).finally(release);
        host.snaps.set(id, record);
        rb.push('forget the snapshot', () => host.snaps.delete(id));
        await host.d.records.saveSnapshot(record);
        host.log.info(result, 'snapshot fetched');
        return result;
      });
    } finally {
      for (const p of m.chain) host.pendingLayers.delete(p.layer);
      unpin();
      unpinImage();
      // An image installed for a fetch that then failed is referred to by nothing.
      if (!host.snaps.has(id)) await collectImages(host);
    }
  });
}
