import { ForkyError } from '@forky/base';
import type { TransferResult } from '@forky/contract';
import { checkProfile } from '../admission.js';
import { round, type Host } from '../host.js';
import { withRollback } from '../rollback.js';
import { ShippingManifest, fetch as fetchParts, publish as publishParts, type ShippingDeps } from '../shipping.js';

function shipping(host: Host): ShippingDeps {
  const { d } = host;
  if (!d.parts) throw new ForkyError('UNAVAILABLE', `host ${d.hostId} has no object store to ship snapshots through`);
  return { hostId: d.hostId, parts: d.parts, layers: d.layers, appLayers: d.appLayers, snapshots: d.snapshots, timeoutMs: 10 * 60_000 };
}

/** A manifest that is not JSON counts as none. */
const notPublished =
  (id: string) =>
  (e: unknown): never => {
    if (e instanceof SyntaxError) throw new ForkyError('NOT_FOUND', `snapshot ${id} has no valid manifest in the object store`);
    throw e;
  };

/** Puts this host's snapshot in the object store (only the parts it lacks). */
export function publish(host: Host, id: string): Promise<TransferResult> {
  host.snap(id);
  return host.lock.run(id, () => publishParts(shipping(host), host.snap(id)));
}

/** Brings a published snapshot here (only the parts this host lacks). */
export function fetch(host: Host, id: string): Promise<TransferResult> {
  return host.lock.run(id, async () => {
    const t0 = performance.now();
    if (host.snaps.has(id))
      return { id, host: host.hostId, parts: 0, moved: 0, bytes: 0, nominalBytes: 0, ms: round(performance.now() - t0) };
    // The object store is writable by every host: a manifest that does not parse is no snapshot.
    const parsed = ShippingManifest.safeParse(await shipping(host).parts.getManifest(id).catch(notPublished(id)));
    if (!parsed.success) throw new ForkyError('NOT_FOUND', `snapshot ${id} has no valid manifest in the object store`);
    const m = parsed.data;
    const image = await host.d.images.get(m.snapshot.image);
    checkProfile(host, m.snapshot.profile, image);
    // Fetched layers belong to no chain until the snapshot is registered: keep them from GC.
    for (const p of m.chain) host.pendingLayers.add(p.layer);
    const unpin = host.apps.pin((m.apps ?? []).map((a) => a.layer));
    try {
      return await withRollback(host.log, { snapshot: id }, async (rb) => {
        rb.push('remove what was fetched', () => host.d.snapshots.remove(id));
        const { record, result } = await fetchParts(shipping(host), m, image);
        host.snaps.set(id, record);
        rb.push('forget the snapshot', () => host.snaps.delete(id));
        await host.d.records.saveSnapshot(record);
        host.log.info(result, 'snapshot fetched');
        return result;
      });
    } finally {
      for (const p of m.chain) host.pendingLayers.delete(p.layer);
      unpin();
    }
  });
}
