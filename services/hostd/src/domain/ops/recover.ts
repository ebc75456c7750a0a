import { NotFoundError } from '@forky/base';
import type { Image } from '../../images.js';
import type { Host } from '../host.js';
import { recoverHost, type Recovered } from '../recovery.js';
import { egressOf, markFailed, type VmRecord } from '../records.js';
import { collectImages } from './images.js';
import { destroyVm } from './lifecycle.js';

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
    spec: async (rec) => host.spec(rec, await imageToAttach(host, rec)),
    logger: host.log,
  });
  for (const s of r.snaps) host.snaps.set(s.info.id, s);
  for (const v of r.vms) {
    // Its lifecycle is kept (the timer is armed once recovery is done); its TTL stays absolute.
    // Idleness counts from the recovery at the earliest: nobody could reach it while no hostd ran
    // (and a record written before lifetimes has no activity time).
    v.lastActivityAt = Math.max(typeof v.lastActivityAt === 'number' ? v.lastActivityAt : 0, Date.now());
    // Found running (its QEMU was resumed meanwhile): no longer paused by its idle rule.
    if (v.state !== 'paused') delete v.pausedBy;
    host.vms.set(v.id, v);
    host.gpus.adopt(
      v.id,
      (v.gpus ?? []).map((g) => g.group),
    );
    if (v.handle) host.watch(v, v.handle);
    await host.dir.register('vm', v.id).catch(() => undefined);
  }
  for (const id of r.report.removed) await host.dir.unregister('vm', id).catch(() => undefined);
  // Filters persist in the kernel across a hostd restart (a live VM is never left open); made
  // whole again for the VMs kept, and removed for the rest.
  for (const v of r.vms) {
    await d.network
      .apply(v.id, egressOf(v))
      .catch((err: unknown) => host.log.error({ err, vm: v.id }, 'could not re-apply the network policy'));
    // A process started outside its filter (by a hostd before filters existed) would send every
    // packet unfiltered: it is stopped, and the VM kept as failed, saying why.
    const h = v.handle;
    if (h && !(await d.network.holds(v.id, h.pid))) {
      host.log.error({ vm: v.id, pid: h.pid }, 'a VM taken back runs outside its network filter: stopping it');
      // Failed first: its process's exit is then not taken for a crash.
      markFailed(v, `its QEMU process (pid ${h.pid}) ran outside its network filter (started by an older hostd), so it was stopped`);
      await d.runtime.destroy(h).catch(() => undefined);
      await d.records.saveVm(v).catch(() => undefined);
    }
  }
  // A self-fork's child still pending was never told it is a child (its hostd stopped mid-fork): it goes.
  for (const v of r.vms.filter((x) => x.selfFork?.pending)) {
    await destroyVm(host, v.id).then(
      () => r.report.removed.push(v.id),
      (err: unknown) => host.log.error({ err, vm: v.id }, 'could not destroy a pending self-fork child'),
    );
  }
  await keepNamed(host, [
    ...r.vms.map((v) => [v.imageId, v.image] as const),
    ...r.snaps.map((s) => [s.info.profile.imageId, s.info.image] as const),
  ]);
  // By-id images whose last snapshot or VM went while hostd was down (or mid-fetch).
  await collectImages(host);
  const swept = await d.network.sweep(new Set(r.vms.map((v) => v.id)));
  if (swept > 0) host.log.info({ swept }, 'removed network filters of VMs that are gone');
  if (r.vms.length + r.report.removed.length + r.report.orphansKilled > 0) host.log.info(r.report, 'recovered after a restart');
  return r;
}

/**
 * The image a VM taken back is attached with: the one it was made from, by id; else (its name
 * rebuilt since, by a hostd that kept no copy by id) the named one. Attaching needs only the
 * VM's sockets, so its QEMU runs on; only a snapshot of it needs its own bytes (and says so).
 */
async function imageToAttach(host: Host, rec: VmRecord): Promise<Image> {
  try {
    return await host.d.images.byId(rec.imageId, rec.image);
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    const named = await host.d.images.get(rec.image);
    host.log.warn(
      { vm: rec.id, imageId: rec.imageId, now: named.id },
      'the image a VM was made from is gone: re-attached with the named one',
    );
    return named;
  }
}

/**
 * Records an older hostd made from a named image it kept no copy of: kept by id now, while the
 * name still means it, so that a later rebuild leaves them whole.
 */
async function keepNamed(host: Host, uses: ReadonlyArray<readonly [string, string]>): Promise<void> {
  for (const [id, name] of new Map(uses.map(([i, n]) => [`${i} ${n}`, [i, n] as const])).values()) {
    const image = await host.d.images.byId(id, name).catch(() => undefined);
    if (image?.stored !== 'named') continue;
    await host.d.images.get(name).catch((err: unknown) => host.log.warn({ err, image: name }, 'could not keep an image by id'));
  }
}
