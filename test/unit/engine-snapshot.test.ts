import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { EngineLimits } from '@forky/hostd';
import { startEngineHost, type EngineHost } from '../helpers/engine-host.js';
import { assertVm, boot, fork, reportDuration, processOf, snapsWithFiles, sorted } from '../helpers/engine-checks.js';

/**
 * A snapshot fails at each of its port calls in turn, and the host must come out whole: either
 * rolled back (the call fails; the VM is as it was, on the same process, and nothing of the
 * snapshot is left) or rolled forward (the call succeeds; the snapshot stands and the VM runs on
 * its successor). The steps are not listed here but recorded from a snapshot that works, so a
 * step added by a refactor is covered without anyone listing it.
 */
interface Case {
  name: string;
  limits?: Partial<EngineLimits>;
  /** Makes the VM to snapshot. */
  setup(h: EngineHost): Promise<string>;
  resume: boolean;
  /** Calls this case must reach (so the loop cannot quietly lose a step). */
  expects: string[];
  /** Fail only the calls after this one (those before are another case's, unchanged). */
  after?: string;
}

const CASES: Case[] = [
  {
    name: 'a booted VM, running, resumed after',
    setup: async (h) => (await boot(h)).id,
    resume: true,
    expects: [
      'snapshots.adoptRam',
      'layers.createOverlay',
      'runtime.prepare',
      'runtime.pause',
      'runtime.saveState',
      'snapshots.commitRam',
      'runtime.load',
      'layers.freeze',
      'runtime.waitAgent',
    ],
  },
  {
    name: 'a booted VM, paused, left paused',
    setup: async (h) => {
      const { id } = await boot(h);
      await h.engine.pause(id);
      return id;
    },
    resume: false,
    expects: ['snapshots.adoptRam', 'runtime.prepare', 'runtime.saveState', 'runtime.load', 'layers.freeze'],
  },
  {
    // Its RAM is its snapshot's, mapped copy-on-write: the new snapshot copies it and adds the pages the child wrote.
    name: 'a forked child, running, left paused',
    setup: async (h) => {
      const src = await boot(h);
      const snap = await h.engine.snapshot({ vm: src.id, resume: true });
      return (await fork(h, snap.id, 1)).children[0]?.id as string;
    },
    resume: false,
    expects: ['snapshots.beginRam', 'runtime.writePrivatePages', 'runtime.saveState', 'runtime.load', 'layers.freeze'],
  },
  {
    name: 'a VM whose disk chain gets too deep, flattened after',
    limits: { maxChainDepth: 2 },
    setup: async (h) => (await boot(h)).id,
    resume: true,
    expects: ['runtime.flattenDisk'],
    after: 'runtime.waitAgent#1',
  },
];

/** Past this call the snapshot is recorded: what fails later can only be reported, not undone. */
const COMMITTED = 'directory.recordLineage#1';

/**
 * Steps still broken (services/hostd/src/domain/ops/snapshot.ts). Each still runs, as a todo, so
 * the report shows the day it passes. `reply`: the host comes out whole, but the call fails for a
 * snapshot that stands. Fixed by issue 16 and now plain tests: a failure at the first step left
 * the VM `snapshotting`; undo removed a booted VM's adopted RAM before giving it back; a failure
 * after the hand-over and before the record left the VM `snapshotting`; directory.register was
 * not caught. Past the hand-over every step is carried through (tried twice, then logged).
 */
function knownBroken(step: string, steps: string[]): { whole?: string; reply?: string } {
  const committed = steps.indexOf(COMMITTED);
  if (committed >= 0 && steps.indexOf(step) > committed) {
    return {
      reply:
        'the snapshot stands but the call fails (a failure past the hand-over is rethrown): the caller never learns its id, and a keyed retry makes a second one',
    };
  }
  return {};
}

/** Every port call of one snapshot of a fresh VM made by `c`, each as `call#n` (n-th call of that name). */
async function traceSteps(c: Case): Promise<string[]> {
  const h = await startEngineHost({ limits: c.limits ?? {} });
  try {
    const vm = await c.setup(h);
    const mark = h.plan.calls.length;
    await h.engine.snapshot({ vm, resume: c.resume });
    const seen = new Map<string, number>();
    return h.plan.calls.slice(mark).map(({ call }) => {
      seen.set(call, (seen.get(call) ?? 0) + 1);
      return `${call}#${seen.get(call)}`;
    });
  } finally {
    await h.close();
  }
}

/** What a VM looks like from outside, its timings aside (they grow as records are rewritten). */
function looks(h: EngineHost, vm: string): unknown {
  const { timings: _timings, ...rest } = h.engine.show(vm);
  return rest;
}

/** The host's files; a VM record's size left out (it may gain a timing, which is no change). */
const filesOf = async (h: EngineHost): Promise<string[]> => (await h.files()).map((f) => f.replace(/(vm\.json):\d+$/, '$1'));

/**
 * Fails the snapshot at `step` on a fresh host and checks the host came out whole, rolled back or
 * forward. Returns whether the call succeeded, for the separate check that it says what it did.
 */
async function failAt(c: Case, step: string): Promise<{ ok: boolean }> {
  const [call, nth] = step.split('#') as [string, string];
  const h = await startEngineHost({ limits: c.limits ?? {} });
  try {
    const vm = await c.setup(h);
    const state = h.engine.show(vm).state as 'running' | 'paused';
    const proc = processOf(h, vm);
    const before = {
      look: looks(h, vm),
      files: await filesOf(h),
      layers: sorted(await h.layers.list()),
      snaps: h.engine.listSnapshots().map((s) => s.id),
      live: h.runtime.live().map((p) => p.pid),
      dirSnaps: sorted(h.directory.snaps),
    };
    h.plan.fail(call, { nth: Number(nth) });
    const outcome = await h.engine.snapshot({ vm, resume: c.resume }).then(
      () => ({ ok: true, error: undefined }),
      (e: unknown) => ({ ok: false, error: e }),
    );
    assert.equal(h.plan.armed, 0, `the fault at ${step} fired`);
    const made = h.engine.listSnapshots().filter((s) => !before.snaps.includes(s.id));

    if (made.length === 0) {
      // Rolled back: as it was, on the same process, with nothing of the snapshot left.
      assert.match(String(outcome.error), /injected failure/, "the call fails with the step's error");
      assert.equal(assertVm(h, vm, state).pid, proc.pid, `back on its old process (${state})`);
      assert.deepEqual(looks(h, vm), before.look);
      assert.deepEqual(
        h.runtime.live().map((p) => p.pid),
        before.live,
        'no successor process is left',
      );
      assert.deepEqual(await filesOf(h), before.files, "no snapshot directory or RAM file is left, and the VM's RAM is back");
      assert.deepEqual(sorted(await h.layers.list()), before.layers, 'no layer is leaked');
      assert.deepEqual(sorted(h.directory.snaps), before.dirSnaps, 'the cluster was told of no snapshot');
      // And it is usable: the next snapshot works, and its successor is the next generation, not one past it.
      const snap = await h.engine.snapshot({ vm, resume: c.resume });
      assert.equal(processOf(h, vm).spec.generation, proc.spec.generation + 1);
      assert.ok(h.engine.listSnapshots().some((s) => s.id === snap.id));
      return outcome;
    }
    // Rolled forward: the snapshot stands and the VM runs on as its successor.
    assert.equal(made.length, 1);
    const id = made[0]?.id as string;
    const next = assertVm(h, vm, c.resume ? 'running' : 'paused');
    assert.equal(next.spec.generation, proc.spec.generation + 1, 'the VM is its successor');
    assert.equal(proc.alive, false, 'the old process is gone');
    assert.deepEqual(await snapsWithFiles(h), sorted([...before.snaps, id]));
    assert.ok(h.directory.snaps.has(id), 'the cluster knows where the snapshot is');
    assert.equal((await fork(h, id, 1)).children.length, 1, 'the snapshot forks');
    return outcome;
  } finally {
    await h.close();
  }
}

// Every step runs on a host of its own: the cases run side by side.
describe('engine: a snapshot failing at any step leaves the VM as it was', { concurrency: true }, () => {
  for (const c of CASES) {
    it(c.name, async (t: TestContext) => {
      const steps = await traceSteps(c);
      for (const want of c.expects)
        assert.ok(steps.includes(`${want}#1`), `a snapshot of ${c.name} calls ${want} (calls: ${steps.join(', ')})`);
      // Each step on a host of its own, all at once; the subtests report them in order.
      const mine = c.after ? steps.slice(steps.indexOf(c.after) + 1) : steps;
      assert.ok(mine.length > 0, `${c.name}: steps after ${c.after}`);
      const runs = mine.map((step) => failAt(c, step));
      for (const r of runs) r.catch(() => undefined);
      for (const [i, step] of mine.entries()) {
        const broken = knownBroken(step, steps);
        let ok: boolean | undefined;
        await t.test(`fails at ${step}: the host comes out whole`, broken.whole ? { todo: broken.whole } : {}, async () => {
          ok = (await (runs[i] as Promise<{ ok: boolean }>)).ok;
        });
        if (ok !== false || steps.indexOf(step) <= steps.indexOf('runtime.load#1')) continue;
        // Past the hand-over the host came out whole but the call failed: a snapshot was made that nobody hears of.
        await t.test(`fails at ${step}: the call succeeds, as the snapshot stands`, broken.reply ? { todo: broken.reply } : {}, () =>
          assert.ok(ok),
        );
      }
    });
  }
});

reportDuration('engine snapshot rollback');
