import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VmEvent } from '@forky/contract';
import { DEFAULT_STREAM_LIMITS, StreamRegistry } from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { assertVm, boot, processOf, reportDuration } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { eventRecorder } from '../helpers/event-recorder.js';

/**
 * A VM's idle rule and the work under way on it (review R1 of the lifetimes, findings 1, 4, 10),
 * dry run: an exec, a guest stream or a one-shot guest call keeps the rule from being due until
 * it ends; a stream's bytes resume a VM the rule paused; an exec that comes while an idle pause
 * is under way waits for it and resumes the VM. Waits that a VM is still there after its idle
 * time are waits for time to pass, which is what is tested.
 */

const kind = (vm: string, k: VmEvent['kind']) => (e: VmEvent) => e.vm === vm && e.kind === k;
/** Past the idle rule's 1000 ms, with room for the timer. */
const PAST_IDLE_MS = 1400;

/** A promise the test settles: what a runtime call is held at. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

describe('engine: idle rule and work under way', { concurrency: true }, () => {
  it('an exec under way keeps an idle VM running past its idle time; its end counts as activity', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
    // A quiet command: the guest answers only when the test says (then fails, which ends it as well).
    const g = gate();
    h.plan.fail('runtime.exec', { gate: g.wait });
    const running = refused(h.engine.exec({ id: vm.id, cmd: ['make'], timeoutMs: 60_000 }));
    await sleep(PAST_IDLE_MS);
    assertVm(h, vm.id, 'running');
    assert.ok(!sink.events.some(kind(vm.id, 'paused')), 'not paused while the exec runs');
    const ended = Date.now();
    g.open();
    assert.equal((await running).name, 'InjectedError');
    const paused = await sink.until(kind(vm.id, 'paused'), 3000);
    assert.ok(paused.seenAt - ended >= 950, `idle counted from the exec's end (${paused.seenAt - ended} ms)`);
  });

  it("a guest stream's slot and a one-shot call keep an idle VM (then: destroy) until they end", async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const streamed = await boot(h, { idle: { afterMs: 1000, then: 'destroy' } });
    const called = await boot(h, { idle: { afterMs: 1000, then: 'destroy' } });
    // hostd's registry, wired to the engine as hostd.ts wires it.
    const registry = new StreamRegistry(DEFAULT_STREAM_LIMITS, (id) => h.engine.work(id));
    const giveBack = registry.reserve(streamed.id);
    const endCall = registry.work(called.id);
    await sleep(PAST_IDLE_MS);
    assertVm(h, streamed.id, 'running');
    assertVm(h, called.id, 'running');
    assert.ok(!sink.events.some((e) => e.kind === 'expired'), 'nothing expired while work was under way');
    const ended = Date.now();
    giveBack();
    endCall();
    endCall(); // ends once
    for (const id of [streamed.id, called.id]) {
      const gone = await sink.until(kind(id, 'destroyed'), 3000);
      assert.ok(gone.seenAt - ended >= 950, `destroyed ${gone.seenAt - ended} ms after its work ended`);
    }
  });

  it('an idle destroy is checked again under the lock: activity while it waited for the lock wins', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { idle: { afterMs: 1000, then: 'destroy' } });
    // The user's pause holds the VM's lock (then fails: the VM runs on) while the rule comes due.
    const g = gate();
    h.plan.fail('runtime.pause', { gate: g.wait });
    const pausing = refused(h.engine.pause(vm.id));
    await sleep(1200);
    h.engine.touch(vm.id);
    const touched = Date.now();
    g.open();
    await pausing;
    // A later operation on the lock: the queued destroy has had its turn before it.
    await h.engine.extend({ id: vm.id, ttlMs: 60_000 });
    assertVm(h, vm.id, 'running');
    assert.ok(!sink.events.some(kind(vm.id, 'expired')), 'no expired event: it was not destroyed');
    const gone = await sink.until(kind(vm.id, 'destroyed'), 3000);
    assert.ok(gone.seenAt - touched >= 950, `destroyed idle time after the touch (${gone.seenAt - touched} ms)`);
    assert.equal(sink.events.filter(kind(vm.id, 'expired')).length, 1);
  });

  it("a stream's bytes (engine.touch) resume a VM its idle rule paused", async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
    await sink.until(kind(vm.id, 'paused'), 3000);
    h.engine.touch(vm.id);
    await sink.until(kind(vm.id, 'resumed'), 1000);
    assertVm(h, vm.id, 'running');
    assert.equal(h.engine.show(vm.id).lifecycle?.pausedBy, undefined);
    // A VM its user paused is not resumed so.
    await h.engine.pause(vm.id);
    h.engine.touch(vm.id);
    await h.engine.extend({ id: vm.id, ttlMs: 60_000 });
    assertVm(h, vm.id, 'paused');
  });

  it('an exec that comes while an idle pause is under way waits for it, then resumes the VM and runs', async (t) => {
    const sink = eventRecorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { idle: { afterMs: 1000, then: 'pause' } });
    const { entered, release } = holdPause(h);
    await entered;
    const exec = h.engine.exec({ id: vm.id, cmd: ['true'], timeoutMs: 1000 });
    // Let the exec reach as far as it goes while the guest is being stopped.
    await sleep(50);
    release();
    assert.equal((await exec).exitCode, 0);
    assertVm(h, vm.id, 'running');
    assert.equal(processOf(h, vm.id).status, 'running', 'the guest runs after the exec');
    assert.deepEqual(sink.of(vm.id).slice(-2), ['paused', 'resumed']);
  });
});

/** The next `runtime.pause` waits until `release` (then pauses): an idle pause under way. */
function holdPause(h: EngineHost): { entered: Promise<void>; release: () => void } {
  const g = gate();
  let entered!: () => void;
  const p = new Promise<void>((resolve) => (entered = resolve));
  const pause = h.runtime.pause.bind(h.runtime);
  h.runtime.pause = async (vm) => {
    h.runtime.pause = pause;
    entered();
    await g.wait;
    return pause(vm);
  };
  return { entered: p, release: g.open };
}

reportDuration('engine idle rule and work under way (review R1)');
