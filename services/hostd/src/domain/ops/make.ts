import type { VmInfo } from '@forky/contract';
import type { Image } from '../../images.js';
import { round, type Host } from '../host.js';
import type { VmHandle, VmSpec } from '../ports.js';
import type { VmRecord } from '../records.js';
import type { Rollback } from '../rollback.js';

/**
 * The steps every new VM shares (a boot, a fork's child): it is listed, gets its own top layer on
 * `backing` (unless it has one), is recorded, started by `start` and registered. Each step pushes
 * its undo onto `rb`, so the caller's failure takes the VM apart again.
 */
export async function makeVm(
  host: Host,
  rb: Rollback,
  rec: VmRecord,
  image: Image,
  backing: string,
  start: (spec: VmSpec, rb: Rollback) => Promise<VmHandle>,
  hasTop = false,
): Promise<VmInfo> {
  const t0 = performance.now();
  host.vms.set(rec.id, rec);
  rb.push(`forget ${rec.id}`, async () => {
    host.vms.delete(rec.id);
    await host.d.records.removeVm(rec);
    await host.dir.unregister('vm', rec.id).catch(() => undefined);
  });
  // The record's size, not the image's: a boot may ask for more (`diskGiB`), and a child keeps its parent's.
  if (!hasTop) rec.chain.push(await host.newLayer(rb, backing, rec.diskVirtualSize));
  await host.persist(rec);
  const handle = await start(host.spec(rec, image), rb);
  rec.handle = handle;
  rec.pid = handle.pid;
  // Let go of before it is stopped: its exit is then not taken for the VM failing.
  rb.push('let go of the process', () => (rec.handle = undefined));
  host.watch(rec, handle);
  rec.timings.startMs = round(performance.now() - t0);
  await host.dir.register('vm', rec.id);
  await host.setState(rec, 'running');
  host.log.info({ vm: rec.id, ms: rec.timings.startMs, from: rec.parentSnapshot ?? rec.image }, 'vm running');
  return host.info(rec);
}
