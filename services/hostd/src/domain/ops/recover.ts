import type { Host } from '../host.js';
import { recoverHost, type Recovered } from '../recovery.js';

/**
 * Takes back what an earlier hostd of this data directory left (see recovery.ts) into the host
 * context. Runs once, before the host serves; returns the finished requests for requests.ts.
 */
export async function recover(host: Host): Promise<Recovered> {
  const { d } = host;
  const r = await recoverHost({
    runtime: d.runtime,
    layers: d.layers,
    snapshots: d.snapshots,
    records: d.records,
    layout: d.layout,
    spec: async (rec) => host.spec(rec, await d.images.get(rec.image)),
    logger: host.log,
  });
  for (const s of r.snaps) host.snaps.set(s.info.id, s);
  for (const v of r.vms) {
    host.vms.set(v.id, v);
    host.gpus.adopt(
      v.id,
      (v.gpus ?? []).map((g) => g.group),
    );
    if (v.handle) host.watch(v, v.handle);
    await host.dir.register('vm', v.id).catch(() => undefined);
  }
  for (const id of r.report.removed) await host.dir.unregister('vm', id).catch(() => undefined);
  if (r.vms.length + r.report.removed.length + r.report.orphansKilled > 0) host.log.info(r.report, 'recovered after a restart');
  return r;
}
