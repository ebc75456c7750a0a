import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger } from '@forky/base';
import type { VmEvent } from '@forky/contract';
import { Lifetimes, type VmRecord } from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { assertVm, boot, reportDuration, vmsWithFiles } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { eventRecorder } from '../helpers/event-recorder.js';
import { InjectedError } from '../helpers/fault-plan.js';

/**
 * A lifetime's destroy (review R1 of the lifetimes, findings 5, 6, 11, 14), dry run: a destroy
 * whose teardown fails leaves the VM failed so the next one runs; a TTL is checked again under the
 * VM's lock (an extend queued first wins); a hung attempt is never joined by a second; after the
 * engine closed, nothing more is started.
 */

const kind = (vm: string, k: VmEvent['kind']) => (e: VmEvent) => e.vm === vm && e.kind === k;

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/**
 * The user's pause of VM `id` holds its lock (once `held` resolves) until `open`, then fails: the
 * VM runs on. The next runtime.pause is the one held.
 */
async function holdLock(h: EngineHost, id: string): Promise<{ open: () => void; done: Promise<unknown> }> {
  const g = gate();
  const entered = gate();
  const pause = h.runtime.pause.bind(h.runtime);
  h.runtime.pause = async () => {
    h.runtime.pause = pause;
    entered.open();
    await g.wait;
    throw new InjectedError('the held pause gives up');
  };
  const done = refused(h.engine.pause(id));
  await entered.wait;
  return { open: g.open, done };
}

describe('engine: lifetime destroys', { concurrency: true }, () => {
  it('a destroy whose teardown fails leaves the VM failed, saying why; the next destroy removes it', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h);
    h.plan.fail('runtime.destroy');
    assert.equal((await refused(h.engine.destroy(vm.id))).name, 'InjectedError');
    const shown = h.engine.show(vm.id);
    assert.equal(shown.state, 'failed');
    assert.match(shown.failure?.reason ?? '', /destroy failed \(injected failure of runtime\.destroy\)/);
    assert.match((await sink.until(kind(vm.id, 'failed'), 1000)).reason ?? '', /destroy failed/);
    assert.equal(h.runtime.live(vm.id).length, 1, 'its process is still known, to be stopped next time');
    await h.engine.destroy(vm.id);
    assert.equal((await refused(Promise.resolve().then(() => h.engine.show(vm.id)))).code, 'NOT_FOUND');
    assert.deepEqual(h.runtime.live(vm.id), []);
    assert.deepEqual(await vmsWithFiles(h), []);
  });

  it('an extend queued on the lock ahead of the TTL destroy wins: no `expired`, the VM lives on', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { ttlMs: 1000 });
    const lock = await holdLock(h, vm.id);
    const extended = h.engine.extend({ id: vm.id, ttlMs: 60_000 });
    // The TTL passes while the lock is held: its destroy queues behind the extend.
    await sleep(Date.parse(vm.lifecycle?.expiresAt ?? '') + 300 - Date.now());
    lock.open();
    await lock.done;
    await extended;
    // A later operation on the lock: the queued destroy has had its turn before it.
    await h.engine.extend({ id: vm.id, ttlMs: 60_000 });
    assertVm(h, vm.id, 'running');
    assert.ok(!sink.events.some(kind(vm.id, 'expired')), 'no expired event');
    assert.equal(h.plan.count('runtime.destroy'), 0);
  });

  it('after the engine closed, a TTL destroy that waited for the lock starts nothing', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { ttlMs: 1000 });
    const lock = await holdLock(h, vm.id);
    await sleep(Date.parse(vm.lifecycle?.expiresAt ?? '') + 300 - Date.now());
    await h.engine.close();
    lock.open();
    await lock.done;
    await h.engine.extend({ id: vm.id, ttlMs: 60_000 });
    assert.equal(h.engine.show(vm.id).state, 'running');
    assert.ok(!sink.events.some(kind(vm.id, 'expired')), 'no expired event after close');
    assert.equal(h.plan.count('runtime.destroy'), 0, 'no destroy after close');
  });

  it('an attempt that hangs past its deadline keeps the VM busy: one `expired`, one destroy, until it settles', async () => {
    const now = Date.now();
    const rec = { id: 'vm-hung0000000', state: 'running', expiresAt: now - 1, lastActivityAt: now } as VmRecord;
    const vms = new Map([[rec.id, rec]]);
    const calls: boolean[] = [];
    let settle!: (r: 'done') => void;
    let called!: () => void;
    const first = new Promise<void>((resolve) => (called = resolve));
    const lt = new Lifetimes(
      vms,
      (_r, _due, announce) => {
        calls.push(announce());
        called();
        return new Promise((resolve) => (settle = resolve));
      },
      silentLogger(),
      { attemptMs: 30, errorRetryMs: 50 },
    );
    try {
      lt.arm();
      await first;
      // Many deadlines and retry delays pass.
      await sleep(400);
      assert.deepEqual(calls, [true], 'one attempt, which said `expired` once');
      rec.state = 'destroyed';
      settle('done');
      await sleep(100);
      assert.deepEqual(calls, [true]);
    } finally {
      lt.close();
    }
  });
});

reportDuration('engine lifetime destroys (review R1)');
