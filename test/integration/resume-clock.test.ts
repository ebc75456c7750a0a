import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { RemoteError, type VmInfo } from '@forky/contract';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce } from '../helpers/repo.js';

/** How long the VM stays paused: the drift a resume must take away (the wait is what is tested). */
const PAUSE_MS = 3000;

/**
 * Issue 20 on real QEMU (tiny): the guest's clock is stepped to the host's after `resume`, as after
 * a fork; `snapshot rm --cascade` of a VM's own snapshot is refused, naming the VM, and destroys
 * nothing, while the children forked from it still go with it once that VM is gone.
 */
describe('resume steps the clock; cascade never destroys the source VM (real QEMU)', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let vm: VmInfo;

  const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd }));

  /** The guest's clock minus the host's (ms); the reading is good to half the exec's round trip. */
  async function clockOffset(id: string): Promise<{ offsetMs: number; errMs: number }> {
    const t0 = Date.now();
    // Busybox's date has no %N; adjtimex reads the clock to the microsecond.
    const out = (await sh(id, 'adjtimex | awk \'/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d.%06d", s, u }\'')).trim();
    const t1 = Date.now();
    assert.match(out, /^\d+\.\d{6}$/, 'the guest prints seconds and microseconds');
    return { offsetMs: Math.round(Number(out) * 1000 - (t0 + t1) / 2), errMs: Math.round((t1 - t0) / 2) };
  }

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url);
    sched = await startTestScheduler(nats.url);
    vm = await host.client.call('vm.boot', { image: 'tiny', memMiB: 128 });
  });

  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it(`pause, ${PAUSE_MS / 1000} s, resume: the guest's clock is within 1 s of the host's`, async (t) => {
    await host.client.call('vm.pause', { id: vm.id });
    await sleep(PAUSE_MS);
    const resumed = await host.client.call('vm.resume', { id: vm.id });
    assert.equal(resumed.state, 'running');
    const { offsetMs, errMs } = await clockOffset(vm.id);
    t.diagnostic(`after a ${PAUSE_MS} ms pause: guest - host = ${offsetMs} ms (± ${errMs} ms)`);
    assert.ok(Math.abs(offsetMs) < 1000, `the guest's clock is ${offsetMs} ms off the host's`);
  });

  it("a snapshot that resumes the VM and a live fork's parent keep the clock within 1 s", async (t) => {
    const snap = await host.client.call('snapshot.create', { vm: vm.id, resume: true });
    const a = await clockOffset(vm.id);
    t.diagnostic(`snapshot (pause ${snap.timings?.pauseMs} ms), resumed: guest - host = ${a.offsetMs} ms (± ${a.errMs} ms)`);
    const live = await host.client.call('fork', { source: vm.id, count: 1, resumeParent: true });
    const b = await clockOffset(vm.id);
    const child = await clockOffset(live.children[0]?.id as string);
    t.diagnostic(`live fork (pause ${live.timings.pauseMs} ms): parent ${b.offsetMs} ms (± ${b.errMs}), child ${child.offsetMs} ms`);
    for (const [what, o] of [
      ['the resumed VM', a],
      ["the live fork's parent", b],
      ['the child', child],
    ] as const)
      assert.ok(Math.abs(o.offsetMs) < 1000, `${what}: the guest's clock is ${o.offsetMs} ms off the host's`);
    await host.client.call('vm.destroy', { id: live.children[0]?.id as string });
  });

  // A paused VM resumed by `snapshot.create {resume: true}` or a live fork is not stepped yet (measured
  // 3.1 s behind after a 3 s pause): services/hostd/src/domain/ops/snapshot.ts would call stepClock
  // (domain/identity.ts) after the successor's agent answers when `resume`.
  it('a paused VM resumed by a snapshot, or as the parent of a live fork, has its clock stepped too', async () => {
    await host.client.call('vm.pause', { id: vm.id });
    await sleep(PAUSE_MS);
    await host.client.call('snapshot.create', { vm: vm.id, resume: true });
    const after = await clockOffset(vm.id);
    assert.ok(Math.abs(after.offsetMs) < 1000, `after snapshot.create the guest's clock is ${after.offsetMs} ms off the host's`);
    await host.client.call('vm.pause', { id: vm.id });
    await sleep(PAUSE_MS);
    const f = await host.client.call('fork', { source: vm.id, count: 1, resumeParent: true });
    const parent = await clockOffset(vm.id);
    assert.ok(Math.abs(parent.offsetMs) < 1000, `after a live fork the parent's clock is ${parent.offsetMs} ms off the host's`);
    for (const c of f.children) await host.client.call('vm.destroy', { id: c.id });
  });

  it("refuses `snapshot rm --cascade` of the VM's own snapshot, naming it; destroys it all once that VM is gone", async () => {
    const snap = await host.client.call('snapshot.create', { vm: vm.id, resume: true });
    const child = (await host.client.call('fork', { source: snap.id, count: 1 })).children[0] as VmInfo;
    const e = await sched.client.call('snapshot.delete', { id: snap.id, cascade: true }).then(
      () => assert.fail('the cascade succeeded'),
      (err: unknown) => err,
    );
    assert.ok(e instanceof RemoteError && e.code === 'CONFLICT', String(e));
    assert.ok(e.message.includes(vm.id), `the refusal names ${vm.id}: ${e.message}`);
    const vms = (await sched.client.call('vm.list', {})).vms;
    for (const id of [vm.id, child.id]) assert.equal(vms.find((v) => v.id === id)?.state, 'running', `${id} still runs`);
    assert.equal((await sh(vm.id, 'echo alive')).trim(), 'alive', 'the VM still execs');
    assert.ok(
      (await sched.client.call('snapshot.list', {})).snapshots.some((s) => s.id === snap.id),
      'the snapshot is still listed',
    );

    // A snapshot of the child below it: the walk takes the child first (its own hostd would keep it).
    const below = await host.client.call('snapshot.create', { vm: child.id, resume: true });
    await host.client.call('vm.destroy', { id: vm.id });
    const r = await sched.client.call('snapshot.delete', { id: snap.id, cascade: true });
    assert.deepEqual(r, { snapshots: [below.id, snap.id], vms: [child.id] }, 'the child forked from it goes with it');
    assert.equal(
      (await sched.client.call('vm.list', {})).vms.some((v) => v.id === child.id),
      false,
    );
  });
});
