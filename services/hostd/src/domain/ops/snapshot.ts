import { newId } from '@forky/base';
import { ramNeed, vmProfile, type RamHold } from '../admission.js';
import { round, type Host } from '../host.js';
import { stepClock } from '../identity.js';
import { egressOf, type SnapshotRecord, type VmRecord } from '../records.js';
import { withRollback } from '../rollback.js';
import { assertAllowed } from '../state.js';

/** How long a snapshot waits for the guest agent to answer what it was sent (PROTOCOL.md, quiesce). */
const GUEST_QUIESCE_MS = 2000;

/**
 * Freezes a VM into a snapshot and hands the VM over to a successor process restored from it,
 * so the VM and the snapshot's children all map the same frozen RAM copy-on-write.
 * Before the pause: the successor is started (waiting for state), the snapshot's RAM is begun
 * (the VM's own RAM file renamed, or a copy of the frozen file it maps), its new disk layer made.
 * During the pause: device state saved, the pages the VM made its own copied, state loaded into
 * the successor. Until the successor has loaded, a failure undoes every step and the old process
 * is the VM as it was; from then on the snapshot stands and the steps left are carried through.
 */
export async function snapshotVm(host: Host, vmId: string, resume: boolean, hold: RamHold, keep = false): Promise<SnapshotRecord> {
  // A child still settling would be frozen before its identity is set: waited for outside the lock.
  await host.vm(vmId).settling;
  return host.lock.run(vmId, () =>
    withRollback(host.log, { vm: vmId }, async (rb) => {
      const { d } = host;
      const vm = host.vm(vmId);
      assertAllowed(vmId, vm.state, 'snapshot');
      const h = host.handle(vm);
      const before = vm.state;
      const image = await d.images.byId(vm.imageId, vm.image);
      const id = newId('snap');
      const top = newId('lyr');
      const files = d.snapshots.files(id);
      await hold.admit(ramNeed.snapshot(vm, files.ram), 'vm');
      const ownRam = vm.ram.shared ? vm.ram.file : undefined;
      // Persisted with the state: a restart mid-snapshot knows what to roll back or forward.
      vm.snapshotPlan = { id, top, from: before, ...(ownRam ? { ownRam } : {}) };
      rb.push('set the VM back', async () => {
        delete vm.snapshotPlan;
        await host.setState(vm, before);
      });
      await host.setState(vm, 'snapshotting');
      const frozen = vm.chain.at(-1) as string;
      const t0 = performance.now();
      // Pushed before the RAM is taken, so undone after it is given back: removing the snapshot's files never takes the VM's RAM.
      rb.push('remove the snapshot files', () => d.snapshots.remove(id));
      if (ownRam) {
        await d.snapshots.adoptRam(id, ownRam);
        rb.push('give the VM its RAM back', () => d.snapshots.returnRam(id, ownRam));
      } else {
        await d.snapshots.beginRam(id, vm.ram.file);
      }
      host.pendingLayers.add(top);
      rb.push('remove the new layer', async () => {
        host.pendingLayers.delete(top);
        await d.layers.remove(top);
      });
      await d.layers.createOverlay(top, frozen, vm.diskVirtualSize);
      const next: VmRecord = { ...vm, generation: vm.generation + 1, ram: { file: files.ram, shared: false }, chain: [...vm.chain, top] };
      const successor = await d.runtime.prepare(host.spec(next, image), { autostart: resume, timeoutMs: d.limits.restoreTimeoutMs });
      rb.push('stop the successor', () => d.runtime.destroy(successor));

      // No guest request may sit unread in the frozen memory, to be carried out again by each child.
      const letGuestGo = await d.runtime.quiesceGuest(h, GUEST_QUIESCE_MS);
      rb.push('let guest requests go', async () => letGuestGo());
      // As late as can be: the fewer pages the guest writes after it, the fewer the pause copies.
      const precopy = d.limits.snapshotPrecopy === true && !ownRam && before === 'running';
      const precopied = precopy ? (await d.runtime.writePrivatePages(h, files.ram, { precopy: true })).bytes : 0;
      const p0 = performance.now();
      const lap = laps(p0);
      if (before === 'running') {
        await d.runtime.pause(h);
        rb.push('resume the VM', () => d.runtime.resume(h));
      }
      lap('stop');
      const { stateBytes } = await d.runtime.saveState(h, files.state);
      lap('save');
      const privateBytes = ownRam ? 0 : (await d.runtime.writePrivatePages(h, files.ram)).bytes;
      lap('private');
      const { ramBytes } = await d.snapshots.commitRam(id);
      lap('commit');
      await d.runtime.load(successor, files.state, d.limits.restoreTimeoutMs);
      lap('load');
      const pauseMs = round(performance.now() - p0);

      // The hand-over: the successor is the VM from here on, and the snapshot stands.
      rb.commit();
      host.pendingLayers.delete(top);
      Object.assign(vm, { handle: successor, pid: successor.pid, generation: next.generation, ram: next.ram, chain: next.chain });
      host.watch(vm, successor);
      await rb.forward('stop the old process', () => d.runtime.destroy(h));
      letGuestGo();
      await rb.forward('freeze the layer', () => d.layers.freeze(frozen));
      let diskBytes = 0;
      await rb.forward('measure the frozen layer', async () => (diskBytes = await d.layers.bytes(frozen)));
      const rec: SnapshotRecord = {
        info: {
          id,
          host: d.hostId,
          image: vm.image,
          vm: vm.id,
          ...(vm.lineage ? { parentSnapshot: vm.lineage } : {}),
          chainDepth: vm.chain.length - 1,
          profile: vmProfile(d.runtime, vm),
          ...(vm.labels ? { labels: vm.labels } : {}),
          // Its children's, counted from their own start, unless a fork sets others.
          ...(vm.ttlMs === undefined ? {} : { ttlMs: vm.ttlMs }),
          ...(vm.idle ? { idle: vm.idle } : {}),
          createdAt: new Date().toISOString(),
          ...(keep ? { keep: true as const } : {}),
          sizes: { stateBytes, ramBytes, diskBytes },
          timings: { pauseMs, totalMs: round(performance.now() - t0), privateBytes },
        },
        chain: vm.chain.slice(0, -1),
        kernelCmdline: vm.kernelCmdline,
        diskVirtualSize: vm.diskVirtualSize,
        ...(vm.apps?.length ? { apps: vm.apps.map((a) => ({ ...a })) } : {}),
        egress: egressOf(vm),
        ...(vm.selfFork ? { selfFork: vm.selfFork.policy } : {}),
      };
      vm.lineage = id;
      delete vm.snapshotPlan;
      host.snaps.set(id, rec);
      host.events.snapshot(rec.info);
      await rb.forward('record the snapshot', () => d.records.saveSnapshot(rec));
      await rb.forward('set the VM', () => host.setState(vm, resume ? 'running' : 'paused'));
      await rb.forward('register the snapshot', () => host.dir.register('snap', id));
      await rb.forward('record the lineage', () => host.dir.recordLineage(rec.info));
      if (resume) await d.runtime.waitAgent(successor, d.limits.restoreTimeoutMs);
      // A VM that was paused before its snapshot resumes behind by that pause: its clock is stepped as on resume.
      if (resume && before === 'paused') await stepClock(d.runtime, successor, vm, host.log);
      await flattenIfDeep(host, vm);
      host.log.info(
        { vm: vmId, snapshot: id, ...rec.info.timings, pauseSteps: lap.steps, precopiedBytes: precopied, ...rec.info.sizes },
        'snapshot taken',
      );
      return rec;
    }),
  );
}

/** Past the configured depth, a VM's disk chain is flattened into its top layer (data unchanged). */
async function flattenIfDeep(host: Host, vm: VmRecord): Promise<void> {
  if (vm.chain.length <= host.limits.maxChainDepth) return;
  const base = vm.chain[0] as string;
  const t0 = performance.now();
  await host.runtime.flattenDisk(host.handle(vm), host.d.layers.path(base), 10 * 60_000);
  const depth = vm.chain.length;
  vm.chain = [base, vm.chain.at(-1) as string];
  await host.persist(vm);
  host.log.info({ vm: vm.id, from: depth, to: 2, ms: round(performance.now() - t0) }, 'disk chain flattened');
}

/** Milliseconds per step of the pause, for the log: where a slow pause went. */
function laps(start: number): ((step: string) => void) & { steps: Record<string, number> } {
  let last = start;
  const steps: Record<string, number> = {};
  return Object.assign(
    (step: string) => {
      const now = performance.now();
      steps[step] = round(now - last);
      last = now;
    },
    { steps },
  );
}
