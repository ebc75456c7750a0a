import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { vmMatches, type VmEvent } from '@forky/contract';
import { hostFor } from '../helpers/engine-host.js';
import { assertVm, boot, fork, reportDuration, vmsWithFiles } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { eventRecorder } from '../helpers/event-recorder.js';

/**
 * Issue 20, dry run: a VM's TTL (`expired`, then `destroyed`), `vm.extend`, its idle rule (pause,
 * resumed by the next exec; or destroy), what a fork's children get, and a TTL that passed while
 * no hostd ran. The waits for what must happen are events, bounded; a wait that a VM is still
 * there after its old deadline is a wait for time to pass, which is what is tested.
 */

const of = (vm: string) => (e: VmEvent) => e.vm === vm;
const kind = (vm: string, k: VmEvent['kind']) => (e: VmEvent) => e.vm === vm && e.kind === k;
const ms = (iso: string | undefined): number => Date.parse(iso ?? 'none');

// One suite, all at once: each test waits mostly on time, and the file must end within 5 s.
describe('engine: lifetimes', { concurrency: true }, () => {
  describe('TTL', { concurrency: true }, () => {
    it('a VM with ttlMs 1000 is gone within 3 s: `expired`, then `destroyed`, its files with it', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const t0 = Date.now();
      const vm = await boot(h, { ttlMs: 1000, labels: { team: 'a' } });
      const at = ms(vm.lifecycle?.expiresAt);
      assert.equal(vm.lifecycle?.ttlMs, 1000);
      assert.ok(at >= t0 + 1000 && at <= Date.now() + 1000, `expires 1 s after it was made (${vm.lifecycle?.expiresAt})`);
      const gone = await sink.until(kind(vm.id, 'destroyed'), 3000);
      assert.ok(gone.seenAt >= at, 'not before its deadline');
      const said = sink.events.filter(of(vm.id));
      assert.deepEqual(
        said.map((e) => e.kind),
        ['created', 'ready', 'expired', 'destroyed'],
      );
      const expired = said[2] as VmEvent;
      assert.deepEqual([expired.reason, expired.labels], [undefined, { team: 'a' }], 'a TTL expiry, with its labels');
      assert.equal((await refused(Promise.resolve().then(() => h.engine.show(vm.id)))).code, 'NOT_FOUND');
      assert.deepEqual(await vmsWithFiles(h), []);
    });

    it('`vm.extend` moves the deadline: there after the old one, gone after the new', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { ttlMs: 1000 });
      const before = Date.now();
      const ext = await h.engine.extend({ id: vm.id, ttlMs: 2200 });
      const at = ms(ext.lifecycle?.expiresAt);
      assert.equal(ext.lifecycle?.ttlMs, 2200);
      assert.ok(at >= before + 2200 && at > ms(vm.lifecycle?.expiresAt) + 1000, 'counted from the extend');
      assert.equal(ms(h.engine.show(vm.id).lifecycle?.expiresAt), at, 'kept');
      const record = JSON.parse(await fs.readFile(path.join(h.dataDir, 'vms', vm.id, 'vm.json'), 'utf8')) as { expiresAt: number };
      assert.equal(record.expiresAt, at, 'written to its record');
      await sleep(ms(vm.lifecycle?.expiresAt) + 400 - Date.now());
      assertVm(h, vm.id, 'running');
      const gone = await sink.until(kind(vm.id, 'destroyed'), 3000);
      assert.ok(gone.seenAt >= at, 'gone after the new deadline');
      assert.equal((await refused(h.engine.extend({ id: vm.id, ttlMs: 5000 }))).code, 'NOT_FOUND', 'an unknown VM');
    });

    it('a failed VM past its TTL is destroyed too', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { ttlMs: 1000 });
      h.runtime.crash(vm.pid as number);
      await sink.until(kind(vm.id, 'failed'));
      await sink.until(kind(vm.id, 'destroyed'), 3000);
      assert.deepEqual(
        sink.events
          .filter(of(vm.id))
          .map((e) => e.kind)
          .slice(-2),
        ['expired', 'destroyed'],
      );
    });
  });

  describe('idle rule', { concurrency: true }, () => {
    it('pauses a VM idle for afterMs (`paused`, reason idle); activity before that puts it off; an exec resumes it and runs', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
      assert.deepEqual(vm.lifecycle?.idle, { afterMs: 1000, then: 'pause' });
      assert.equal(vm.lifecycle?.expiresAt, undefined, 'no TTL');
      await sleep(500);
      const active = Date.now();
      h.engine.touch(vm.id);
      const paused = await sink.until(kind(vm.id, 'paused'), 3000);
      assert.ok(paused.seenAt >= active + 1000, `idle counts from its last activity (${paused.seenAt - active} ms)`);
      assert.equal(paused.reason, 'idle');
      assertVm(h, vm.id, 'paused');
      assert.equal(h.engine.show(vm.id).lifecycle?.pausedBy, 'idle');

      const r = await h.engine.exec({ id: vm.id, cmd: ['true'], timeoutMs: 1000 });
      assert.equal(r.exitCode, 0, 'the exec ran');
      assertVm(h, vm.id, 'running');
      assert.equal(h.engine.show(vm.id).lifecycle?.pausedBy, undefined);
      assert.deepEqual(sink.of(vm.id).slice(-2), ['paused', 'resumed']);
    });

    it('a guest session (streams, file calls) resumes it as well', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
      await sink.until(kind(vm.id, 'paused'), 3000);
      // The dry run has no agent (UNAVAILABLE): the VM was resumed before the session was asked for.
      assert.equal((await refused(h.engine.guest(vm.id))).code, 'UNAVAILABLE');
      assertVm(h, vm.id, 'running');
    });

    it('a VM its user paused is not resumed by an exec (INVALID_STATE, as before), nor paused again', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
      await h.engine.pause(vm.id);
      const e = await refused(h.engine.exec({ id: vm.id, cmd: ['true'], timeoutMs: 1000 }));
      assert.equal(e.code, 'INVALID_STATE');
      assert.equal((await refused(h.engine.guest(vm.id))).code, 'INVALID_STATE');
      assert.equal((await sink.until(kind(vm.id, 'paused'))).reason, undefined, "the user's pause");
      await sleep(1300);
      assertVm(h, vm.id, 'paused');
      assert.equal(sink.events.filter(kind(vm.id, 'paused')).length, 1);
      assert.equal((await h.engine.resume(vm.id)).state, 'running');
    });

    it('destroys a VM idle for afterMs with `then: destroy` (`expired`, reason idle)', async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const vm = await boot(h, { idle: { afterMs: 1000, then: 'destroy' } });
      await sink.until(kind(vm.id, 'destroyed'), 3000);
      assert.equal(sink.events.find(kind(vm.id, 'expired'))?.reason, 'idle');
      assert.deepEqual(sink.of(vm.id).slice(-2), ['expired', 'destroyed']);
    });
  });

  describe("a fork's children and a restart", { concurrency: true }, () => {
    it("a child gets the source's TTL and idle rule from its own start; the fork's own override them", async (t) => {
      const sink = eventRecorder();
      const h = await hostFor(t, { events: sink });
      const src = await boot(h, { ttlMs: 60_000, idle: { afterMs: 60_000, then: 'destroy' } });
      const snap = await h.engine.snapshot({ vm: src.id, resume: true });
      assert.deepEqual([snap.ttlMs, snap.idle], [60_000, { afterMs: 60_000, then: 'destroy' }], 'the snapshot keeps them');
      const t0 = Date.now();
      const [inherits] = (await fork(h, snap.id, 1, { template: 'tpl-a' })).children;
      assert.equal(inherits?.lifecycle?.ttlMs, 60_000);
      assert.ok(ms(inherits?.lifecycle?.expiresAt) >= t0 + 60_000, 'counted from its own start');
      assert.deepEqual(inherits?.lifecycle?.idle, { afterMs: 60_000, then: 'destroy' });
      assert.equal(inherits?.template, 'tpl-a');
      assert.deepEqual(
        h.engine
          .list()
          .filter((v) => vmMatches(v, { template: 'tpl-a' }))
          .map((v) => v.id),
        [inherits?.id],
      );

      const [own] = (await fork(h, snap.id, 1, { ttlMs: 1000, idle: { afterMs: 30_000, then: 'pause' } })).children;
      assert.equal(own?.lifecycle?.ttlMs, 1000);
      assert.deepEqual(own?.lifecycle?.idle, { afterMs: 30_000, then: 'pause' });
      assert.equal(own?.template, undefined);
      await sink.until(kind(own?.id as string, 'destroyed'), 3000);
      assertVm(h, inherits?.id as string, 'running');
      assertVm(h, src.id, 'running');
    });

    it('a VM whose TTL passed while no engine ran is destroyed once the next one recovers; idleness counts from the recovery', async (t) => {
      const sink = eventRecorder();
      let h = await hostFor(t, { events: sink });
      const late = await boot(h, { ttlMs: 60_000 });
      const kept = await boot(h, { ttlMs: 60_000, idle: { afterMs: 60_000, then: 'pause' } });
      const quiet = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
      // Written as the records a restart finds: a deadline that passed while "hostd was down", and
      // activity an hour old (nobody could reach the VM while no hostd ran).
      const rewrite = async (id: string, over: Record<string, number>): Promise<void> => {
        const file = path.join(h.dataDir, 'vms', id, 'vm.json');
        await fs.writeFile(file, JSON.stringify({ ...JSON.parse(await fs.readFile(file, 'utf8')), ...over }));
      };
      await rewrite(late.id, { expiresAt: Date.now() - 1000 });
      await rewrite(quiet.id, { lastActivityAt: Date.now() - 3_600_000 });
      const down = Date.now();
      h = await h.restart();
      const served = Date.now();
      t.after(() => h.engine.close());
      const gone = await sink.until(kind(late.id, 'destroyed'), 2000);
      assert.ok(gone.seenAt - served < 1000, `destroyed ${gone.seenAt - served} ms after recovery`);
      assert.ok(sink.events.some(kind(late.id, 'expired')));
      assert.equal((await refused(Promise.resolve().then(() => h.engine.show(late.id)))).code, 'NOT_FOUND');
      const { lastActivityAt, ...life } = h.engine.show(kept.id).lifecycle ?? {};
      const { lastActivityAt: _before, ...lifeBefore } = kept.lifecycle ?? {};
      assert.deepEqual(life, lifeBefore, 'the same TTL (absolute) and idle rule after the restart');
      assert.ok(ms(lastActivityAt) >= down, 'its idle time counts from the recovery');
      assertVm(h, kept.id, 'running');
      const paused = await sink.until(kind(quiet.id, 'paused'), 2500);
      assert.ok(paused.seenAt - down >= 1000, `an hour-old activity paused it ${paused.seenAt - served} ms after recovery, not at once`);
    });
  });
});

reportDuration('engine lifetimes (issue 20)');
