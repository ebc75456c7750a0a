import type { Logger } from '@forky/base';
import type { Layout } from '../layout.js';
import type { LayerStore, RecordStore, RunningProcess, SnapshotStore, VmRuntime, VmSpec } from './ports.js';
import { markFailed, type SnapshotRecord, type VmRecord } from './records.js';

export interface RecoveryReport {
  /** VMs whose QEMU ran on and that this hostd now drives. */
  adopted: string[];
  /** VMs caught mid-snapshot and put back as they were (the snapshot discarded). */
  rolledBack: string[];
  /** Half-made VMs (a fork or boot that never finished), VMs being destroyed. */
  removed: string[];
  /** VMs whose QEMU died while hostd was down: kept as `failed`, as if it had died with hostd up. */
  failed: string[];
  /** QEMU processes that belonged to no VM (warm pool, successors of a failed snapshot). */
  orphansKilled: number;
  /** Files and directories that belonged to nothing. */
  strayFilesRemoved: number;
}

export interface RecoveryDeps {
  runtime: VmRuntime;
  layers: LayerStore;
  snapshots: SnapshotStore;
  records: RecordStore;
  layout: Layout;
  spec: (rec: VmRecord) => Promise<VmSpec>;
  logger: Logger;
}

export interface Recovered {
  vms: VmRecord[];
  snaps: SnapshotRecord[];
  /** Finished requests by idempotency key: a retry gets the same reply. */
  requests: Array<{ key: string; op: string; result: unknown }>;
  report: RecoveryReport;
}

const ATTACH_TIMEOUT_MS = 5000;

/**
 * What a restarted hostd finds on disk and in /proc, made whole again: every VM whose QEMU still
 * runs is adopted; a snapshot caught half-way is rolled back (or forward, if its successor had
 * taken over); VMs of requests that never finished are removed (forks are all or nothing); a VM
 * whose QEMU died meanwhile is kept as `failed`, as when it dies with hostd up (listed until
 * destroyed); and processes and files that belong to nothing are removed.
 */
export async function recoverHost(d: RecoveryDeps): Promise<Recovered> {
  const log = d.logger.child({ component: 'recovery' });
  const report: RecoveryReport = { adopted: [], rolledBack: [], removed: [], failed: [], orphansKilled: 0, strayFilesRemoved: 0 };
  const { vms: records, snaps, requests } = await d.records.loadAll();
  const finished = new Set(requests.map((r) => r.key));
  const snapIds = new Set(snaps.map((s) => s.info.id));
  const procs = await d.runtime.processes(d.layout.vmsDir());
  const claimed = new Set<RunningProcess>();
  const vms: VmRecord[] = [];

  for (const rec of records) {
    const mine = procs.filter((p) => p.vmId === rec.id);
    const proc = (gen: number): RunningProcess | undefined => mine.find((p) => p.generation === gen);
    const attach = async (r: VmRecord, p: RunningProcess): Promise<string> => {
      const { handle, status } = await d.runtime.attach(await d.spec(r), p.pid, ATTACH_TIMEOUT_MS);
      claimed.add(p);
      r.handle = handle;
      r.pid = p.pid;
      return status;
    };
    const remove = async (why: string): Promise<void> => {
      for (const p of mine) await p.kill();
      mine.forEach((p) => claimed.add(p));
      await d.records.removeVm(rec);
      report.removed.push(rec.id);
      log.warn({ vm: rec.id, state: rec.state, why }, 'VM removed on restart');
    };
    /** Its process is gone (or unusable): what is left of it is a failed VM, cleaned as host.ts does when a process dies with hostd up. */
    const fail = async (why: string): Promise<void> => {
      // Attached before something else failed: let go of it first.
      if (rec.handle) await d.runtime.destroy(rec.handle).catch(() => undefined);
      for (const p of mine) await p.kill();
      mine.forEach((p) => claimed.add(p));
      log.warn({ vm: rec.id, state: rec.state, why }, 'VM failed while hostd was down');
      markFailed(rec, why);
      await d.records.removeRuntime(rec);
      report.failed.push(rec.id);
    };
    const unfinished = !!rec.requestKey && !finished.has(rec.requestKey);
    try {
      if (unfinished) {
        await remove(`the request that made it (${rec.requestKey}) never finished`);
      } else if (rec.state === 'snapshotting' && rec.snapshotPlan) {
        const plan = rec.snapshotPlan;
        const old = proc(rec.generation);
        const successor = proc(rec.generation + 1);
        if (old) {
          // Not handed over yet: the old process is the VM; the snapshot goes.
          if (successor) await successor.kill();
          if (successor) claimed.add(successor);
          // The VM's own RAM, if the snapshot had taken it by rename, goes back.
          if (plan.ownRam && (await d.records.exists(d.snapshots.files(plan.id).ram)) && !(await d.records.exists(plan.ownRam)))
            await d.snapshots.returnRam(plan.id, plan.ownRam);
          await d.snapshots.remove(plan.id);
          await d.layers.remove(plan.top).catch(() => undefined);
          const status = await attach(rec, old);
          // `cont` also takes back the disks a device-state save let go of.
          if (plan.from === 'running' && status !== 'running') await d.runtime.resume(rec.handle as NonNullable<VmRecord['handle']>);
          rec.state = plan.from;
          delete rec.snapshotPlan;
          report.rolledBack.push(rec.id);
        } else if (successor && snapIds.has(plan.id)) {
          // Handed over and recorded: the successor is the VM.
          await d.layers.freeze(rec.chain.at(-1) as string).catch(() => undefined);
          Object.assign(rec, {
            generation: rec.generation + 1,
            ram: { file: d.snapshots.files(plan.id).ram, shared: false },
            chain: [...rec.chain, plan.top],
            lineage: plan.id,
          });
          rec.state = (await attach(rec, successor)) === 'running' ? 'running' : 'paused';
          delete rec.snapshotPlan;
          report.adopted.push(rec.id);
        } else {
          // Neither process runs: an unrecorded snapshot goes (its layer is collected as unused).
          if (!snapIds.has(plan.id)) await d.snapshots.remove(plan.id);
          await fail('its QEMU exited mid-snapshot while hostd was down');
        }
      } else if (rec.state === 'running' || rec.state === 'paused') {
        const p = proc(rec.generation);
        if (!p) await fail('its QEMU exited while hostd was down');
        else {
          rec.state = (await attach(rec, p)) === 'running' ? 'running' : 'paused';
          report.adopted.push(rec.id);
        }
      } else if (rec.state === 'failed') {
        // Failed before the restart: it stays so, and any process of it left is an orphan.
        await d.records.removeRuntime(rec);
      } else {
        await remove(`it was ${rec.state} when hostd stopped`);
      }
    } catch (err) {
      const why = `re-attaching failed: ${(err as Error).message}`;
      await (unfinished ? remove(why) : fail(why)).catch(() => remove(why)).catch(() => undefined);
    }
    if (!report.removed.includes(rec.id)) {
      await d.records.saveVm(rec);
      vms.push(rec);
    }
  }

  for (const p of procs) {
    if (claimed.has(p)) continue;
    await p.kill();
    report.orphansKilled++;
  }
  const rams = new Set([...vms.map((v) => v.ram.file), ...snaps.map((s) => d.snapshots.files(s.info.id).ram)]);
  report.strayFilesRemoved += await d.records.sweep({ vms: new Set(vms.map((v) => v.id)), snaps: snapIds, rams });
  return { vms, snaps, requests, report };
}
