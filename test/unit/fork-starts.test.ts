import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { withDeadline } from '@forky/base';
import type { VmHandle } from '@forky/hostd';
import { hostFor } from '../helpers/engine-host.js';
import { boot, fork } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';

/**
 * A big fork (issue 21, 100 children): only `forkConcurrency` children start and load at once,
 * but the children already running wait for their agents together, as the raw floor does; a
 * slot is not held through the guest's answer.
 */
describe('fork: bounded starts, agents awaited together', () => {
  it('8 children at forkConcurrency 2: at most 2 load at once; once all are loaded, all 8 wait for their agents at once', async (t) => {
    const h = await hostFor(t, { limits: { forkConcurrency: 2 } });
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    const rt = h.runtime;
    let loading = 0;
    let maxLoading = 0;
    let waiting = 0;
    let loaded = 0;
    let loadedAtFirstWait: number | undefined;
    let releaseAgents!: () => void;
    const allWaiting = new Promise<void>((resolve) => (releaseAgents = resolve));
    const { prepare, load, waitAgent } = { prepare: rt.prepare.bind(rt), load: rt.load.bind(rt), waitAgent: rt.waitAgent.bind(rt) };
    rt.prepare = async (...a: Parameters<typeof rt.prepare>): Promise<VmHandle> => {
      maxLoading = Math.max(maxLoading, ++loading);
      return prepare(...a).catch((e: unknown) => {
        loading--;
        throw e;
      });
    };
    rt.load = async (...a: Parameters<typeof rt.load>): Promise<void> => {
      try {
        await load(...a);
        loaded++;
      } finally {
        loading--;
      }
    };
    // No agent answers until all 8 are waiting: a fork holding a slot through the answer would
    // never get there (2 slots), and the deadline says so.
    rt.waitAgent = async (...a: Parameters<typeof rt.waitAgent>): Promise<void> => {
      loadedAtFirstWait ??= loaded;
      if (++waiting === 8) releaseAgents();
      await withDeadline(allWaiting, 3000, 'all 8 children waiting for their agents');
      return waitAgent(...a);
    };
    const r = await fork(h, snap.id, 8);
    assert.equal(r.children.length, 8);
    assert.equal(waiting, 8);
    assert.ok(maxLoading <= 2, `${maxLoading} children loaded at once; the bound is 2`);
    assert.equal(maxLoading, 2, 'the bound is used');
    // The agent and identity deadlines count from there: no child's runs while siblings load.
    assert.equal(loadedAtFirstWait, 8, 'the first agent wait comes once all 8 are loaded');
  });

  it('a child that fails stops the ones not yet started (all or nothing): 8 at concurrency 2, the 3rd start fails', async (t) => {
    const h = await hostFor(t, { limits: { forkConcurrency: 2 } });
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    const before = h.runtime.live().map((p) => p.pid);
    const from = h.plan.calls.length;
    h.plan.fail('runtime.prepare', { nth: 3 });
    const e = await refused(fork(h, snap.id, 8));
    assert.match(e.message, /^1 of 8 children failed; none kept \((\d) not started\): injected failure of runtime\.prepare/);
    const prepares = h.plan.calls.slice(from).filter((c) => c.call === 'runtime.prepare').length;
    // The 3rd fails with the 2nd (or 1st) still loading: at most one more starts in that slot.
    assert.ok(prepares <= 4, `${prepares} of 8 children were started`);
    assert.equal(Number(/\((\d) not started\)/.exec(e.message)?.[1]), 8 - prepares);
    assert.deepEqual(
      h.runtime.live().map((p) => p.pid),
      before,
      'no child process is left',
    );
  });
});
