import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { pollUntil } from '@forky/base';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { boot, exists, fork, reportDuration, sorted, vmsWithFiles } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';

/**
 * fork.abandon, dry run: the scheduler gave up a keyed fork share for good (placed elsewhere, or
 * the fork failed), so what the host made or still makes of it goes, and its key is forgotten.
 */
const requestFile = (h: EngineHost, key: string): string => path.join(h.dataDir, 'requests', `${key}.json`);
const ids = (r: { children: Array<{ id: string }> }): string[] => r.children.map((c) => c.id);

describe('engine: a keyed fork abandoned by its caller', { concurrency: true }, () => {
  it('done: its children are destroyed, its record forgotten, and the key then forks anew', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    const first = await fork(h, snap.id, 2, { key: 'key-abandon-a' });
    assert.ok(await exists(requestFile(h, 'key-abandon-a')));
    const r = await h.engine.abandonFork('key-abandon-a');
    assert.deepEqual({ ...r, destroyed: sorted(r.destroyed) }, { found: 'done', destroyed: sorted(ids(first)) });
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
    );
    assert.deepEqual(await vmsWithFiles(h), [src.id], 'their files went with them');
    assert.equal(await exists(requestFile(h, 'key-abandon-a')), false, 'no outcome is kept on disk for the key');
    assert.deepEqual(await h.engine.abandonFork('key-abandon-a'), { found: 'none', destroyed: [] }, 'asked again: nothing more');
    const again = await fork(h, snap.id, 2, { key: 'key-abandon-a' });
    assert.equal(again.children.length, 2);
    assert.equal(
      ids(again).some((id) => ids(first).includes(id)),
      false,
      'new children, not the destroyed ones handed back',
    );
  });

  it('running: the reply says so, and its children go once it ends; nothing of it is saved', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    let release!: () => void;
    h.plan.hold('runtime.waitAgent', new Promise<void>((res) => (release = res)));
    const forking = fork(h, snap.id, 2, { key: 'key-abandon-b' });
    await pollUntil(async () => (h.plan.armed === 0 ? true : undefined), { timeoutMs: 2000, what: 'the fork held at an agent wait' });
    assert.deepEqual(await h.engine.abandonFork('key-abandon-b'), { found: 'running', destroyed: [] });
    release();
    const made = await forking;
    assert.equal(made.children.length, 2, 'the fork itself ends as it would have');
    await pollUntil(async () => (h.engine.list().length === 1 ? true : undefined), { timeoutMs: 5000, what: 'its children destroyed' });
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
    );
    assert.deepEqual(
      h.runtime.live().map((p) => p.spec.id),
      [src.id],
      'their processes stopped',
    );
    assert.equal(await exists(requestFile(h, 'key-abandon-b')), false, 'its outcome was not saved under the key');
  });

  it('a key no fork was made under: none, and nothing changes', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const mark = h.plan.calls.length;
    assert.deepEqual(await h.engine.abandonFork('key-never-used'), { found: 'none', destroyed: [] });
    assert.deepEqual(h.plan.calls.slice(mark), [], 'no port was called');
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
    );
  });

  it("another request's key: CONFLICT, and what that request made stays", async (t) => {
    const h = await hostFor(t);
    const src = await boot(h, { key: 'key-a-boot' });
    const e = await refused(h.engine.abandonFork('key-a-boot'));
    assert.equal(e.code, 'CONFLICT');
    assert.equal(e.details?.field, 'key');
    assert.equal((await boot(h, { key: 'key-a-boot' })).id, src.id, 'the boot is still what its key returns');
    assert.equal(h.engine.list().length, 1);
  });

  it('after a restart: the fork restored from disk is abandoned like one this process made', async (t) => {
    let h = await hostFor(t);
    const src = await boot(h);
    const first = await fork(h, src.id, 2, { key: 'key-abandon-c', resumeParent: true });
    h = await h.restart();
    const r = await h.engine.abandonFork('key-abandon-c');
    assert.deepEqual({ ...r, destroyed: sorted(r.destroyed) }, { found: 'done', destroyed: sorted(ids(first)) });
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
    );
    assert.equal(await exists(requestFile(h, 'key-abandon-c')), false);
  });
});

reportDuration('engine abandon');
