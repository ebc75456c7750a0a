import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pollUntil } from '@forky/base';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { assertVm, boot, exists, fork, hostState, reportDuration, snapsWithFiles, sorted, vmsWithFiles } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';

/**
 * The hostd engine's records, dry run: deleting snapshots (refused while anything depends on them,
 * or with everything that does), and idempotency keys (a request repeated under its key gets the
 * first run's outcome and runs once, across a restart too; a failed one may be retried and then runs).
 */

describe('engine: deleting a snapshot', { concurrency: true }, () => {
  it('refuses while forked children and a snapshot below run on it, naming them, and with cascade removes them all', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const r = await fork(h, src.id, 2);
    const snap = r.snapshot.id;
    // The source is gone: what depends on the snapshot now is its children and what came of them.
    await h.engine.destroy(src.id);
    const [c1, c2] = r.children.map((c) => c.id) as [string, string];
    const snap2 = await h.engine.snapshot({ vm: c1, resume: true });
    const c3 = (await fork(h, snap2.id, 1)).children[0]?.id as string;

    const before = await hostState(h);
    const e = await refused(h.engine.deleteSnapshot(snap));
    assert.equal(e.code, 'CONFLICT');
    assert.deepEqual(sorted(e.details?.vms as string[]), sorted([c1, c2, c3]), 'every VM on its RAM or disk chain');
    assert.deepEqual(e.details?.snapshots, [snap2.id], 'the snapshot whose chain runs through it');
    for (const id of [c1, c2, c3, snap2.id]) assert.ok(e.message.includes(id), `the message names ${id}`);
    assert.deepEqual(await hostState(h), before, 'a refusal changes nothing');

    const out = await h.engine.deleteSnapshot(snap, true);
    assert.deepEqual(sorted(out.vms), sorted([c1, c2, c3]));
    assert.deepEqual(sorted(out.snapshots), sorted([snap, snap2.id]));
    assert.equal(out.snapshots.at(-1), snap, 'dependents first');
    assert.deepEqual(h.engine.list(), []);
    assert.deepEqual(h.engine.listSnapshots(), []);
    assert.deepEqual(h.runtime.live(), [], 'no process is left');
    assert.deepEqual(await h.files(), [], 'no file is left, layers included');
    assert.deepEqual(await hostState(h).then((s) => s.dir), [[], [], []], 'the cluster is told it is all gone');
  });

  it('deletes a snapshot nothing depends on, and leaves the snapshot it came from and its VMs alone', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const s1 = await h.engine.snapshot({ vm: src.id, resume: true });
    const [c1, c2] = (await fork(h, s1.id, 2)).children.map((c) => c.id) as [string, string];
    const s2 = await h.engine.snapshot({ vm: c1, resume: true });
    await h.engine.destroy(c1);
    // s2's chain runs through s1, not the other way round; no VM runs on s2 any more.
    const out = await h.engine.deleteSnapshot(s2.id);
    assert.deepEqual(out, { snapshots: [s2.id], vms: [] });
    assert.deepEqual(await snapsWithFiles(h), [s1.id]);
    assertVm(h, src.id, 'running');
    assertVm(h, c2, 'running');
    assert.deepEqual(await vmsWithFiles(h), sorted([src.id, c2]));
    assert.ok(!h.directory.snaps.has(s2.id) && !h.directory.lineage.has(s2.id), 'the cluster forgets it');
    assert.ok(h.directory.snaps.has(s1.id));
    assert.equal((await fork(h, s1.id, 1)).children.length, 1, 'the snapshot below still forks');
  });

  it("refuses to delete a VM's own latest snapshot without cascade, naming the VM", async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const snap = await h.engine.snapshot({ vm: vm.id, resume: true });
    const before = await hostState(h);
    const e = await refused(h.engine.deleteSnapshot(snap.id));
    assert.equal(e.code, 'CONFLICT');
    assert.deepEqual(e.details?.vms, [vm.id], 'the VM runs on its memory since it was taken');
    assert.deepEqual(await hostState(h), before);
  });

  // Issue 20: "`snapshot rm --cascade` never destroys the VM the snapshot was taken from (it keeps
  // running on a private copy, or the removal is refused and says why)". Today the cascade
  // destroys that VM (services/hostd/src/domain/ops/delete-snapshot.ts counts it among the dependents).
  it.todo("issue 20: deleting a VM's own latest snapshot with cascade keeps the VM running", async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const snap = await h.engine.snapshot({ vm: vm.id, resume: true });
    const out = await h.engine.deleteSnapshot(snap.id, true).catch((e: unknown) => e);
    assert.ok(!(out && typeof out === 'object' && 'vms' in out && (out.vms as string[]).includes(vm.id)), 'the VM is not destroyed');
    assertVm(h, vm.id, 'running');
  });

  it('refuses to delete a snapshot a fork is restoring from, and deletes it once the fork is done', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    await h.engine.destroy(src.id);
    let release!: () => void;
    // The child's restore waits at load until the test has tried the delete.
    h.plan.fail('runtime.load', { gate: new Promise<void>((r) => (release = r)) });
    const mark = h.plan.calls.length;
    const forking = fork(h, snap.id, 1).then(
      () => assert.fail('the fork succeeded'),
      (e: unknown) => e,
    );
    await pollUntil(async () => (h.plan.count('runtime.load', mark) === 1 ? true : undefined), {
      timeoutMs: 2000,
      what: 'the child at load',
    });
    const e = await refused(h.engine.deleteSnapshot(snap.id, true));
    assert.equal(e.code, 'CONFLICT');
    assert.match(e.message, /in use by a fork in progress/);
    release();
    assert.match(String(await forking), /injected failure of runtime\.load/);
    assert.deepEqual(h.engine.list(), [], 'the failed fork left no child');
    assert.deepEqual(await h.engine.deleteSnapshot(snap.id), { snapshots: [snap.id], vms: [] });
    assert.deepEqual(await h.files(), []);
  });
});

const ids = (r: { children: Array<{ id: string }> }): string[] => r.children.map((c) => c.id);
/** Children restored since `mark`: a restore is a prepare and a load of a VM that is not `src`. */
const restores = (h: EngineHost, src: string, mark: number) =>
  ['runtime.prepare', 'runtime.load'].map((c) => h.plan.count(c, mark, (x) => x.vmId !== undefined && x.vmId !== src));
const requestFile = (h: EngineHost, key: string): string => path.join(h.dataDir, 'requests', `${key}.json`);

describe('engine: idempotency keys', { concurrency: true }, () => {
  it('a fork repeated under its key returns the same children, restored once', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    const mark = h.plan.calls.length;
    const first = await fork(h, snap.id, 3, { key: 'key-fork-a' });
    const again = await fork(h, snap.id, 3, { key: 'key-fork-a' });
    assert.deepEqual(ids(again), ids(first));
    assert.deepEqual(again, first, 'the very same reply');
    assert.deepEqual(restores(h, src.id, mark), [3, 3], 'each child was prepared and loaded once');
    assert.equal(h.engine.list().length, 4);
    assert.ok(await exists(requestFile(h, 'key-fork-a')), 'the outcome is kept on disk for a restart');
  });

  it('two forks sent at once under one key make one set of children', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const mark = h.plan.calls.length;
    const [a, b] = await Promise.all([
      fork(h, src.id, 2, { key: 'key-fork-b', resumeParent: true }),
      fork(h, src.id, 2, { key: 'key-fork-b', resumeParent: true }),
    ]);
    assert.deepEqual(ids(a), ids(b));
    assert.equal(a.snapshot.id, b.snapshot.id);
    assert.equal(h.engine.listSnapshots().length, 1, 'the source was snapshotted once');
    assert.equal(h.plan.count('runtime.saveState', mark), 1);
    assert.deepEqual(restores(h, src.id, mark), [2, 2]);
    assert.equal(h.engine.list().length, 3);
  });

  it('a key used for a fork is refused for any other request, which then touches nothing', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h, { key: 'key-used-once' });
    assert.equal((await boot(h, { key: 'key-used-once' })).id, src.id, 'a boot repeated under its key is the same VM');
    assert.equal(h.plan.count('runtime.boot'), 1, 'booted once');
    const files = await h.files();
    const mark = h.plan.calls.length;
    for (const attempt of [
      () => fork(h, src.id, 1, { key: 'key-used-once' }),
      () => h.engine.snapshot({ vm: src.id, resume: true, key: 'key-used-once' }),
    ]) {
      const e = await refused(attempt());
      assert.equal(e.code, 'CONFLICT');
      assert.equal(e.details?.field, 'key');
      assert.match(e.message, /used for a boot request/);
    }
    assert.deepEqual(h.plan.calls.slice(mark), [], 'no port was called');
    assert.deepEqual(await h.files(), files);
    assertVm(h, src.id, 'running');
  });

  it('a keyed fork that failed may be retried under its key, and then runs', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    h.plan.fail('runtime.load');
    const e = await refused(fork(h, snap.id, 2, { key: 'key-fork-c' }));
    assert.match(e.message, /injected failure/);
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
    );
    assert.equal(await exists(requestFile(h, 'key-fork-c')), false, 'a failure is not kept as the outcome');

    const mark = h.plan.calls.length;
    const retry = await fork(h, snap.id, 2, { key: 'key-fork-c' });
    assert.equal(retry.children.length, 2);
    for (const c of retry.children) assertVm(h, c.id, 'running');
    assert.deepEqual(restores(h, src.id, mark), [2, 2], 'the retry ran');
    assert.deepEqual(ids(await fork(h, snap.id, 2, { key: 'key-fork-c' })), ids(retry), 'and is now what the key returns');
    assert.deepEqual(restores(h, src.id, mark), [2, 2]);
  });

  it('after a restart, a keyed fork retried (its reply lost) returns the children it made, without making more', async (t) => {
    let h = await hostFor(t);
    const src = await boot(h);
    const first = await fork(h, src.id, 2, { key: 'key-fork-d', resumeParent: true });
    const pids = sorted(h.runtime.live().map((p) => String(p.pid)));
    h = await h.restart();
    // The processes ran on through the restart: the new engine takes them back.
    assert.deepEqual(sorted(h.engine.list().map((v) => v.id)), sorted([src.id, ...ids(first)]));
    for (const id of [src.id, ...ids(first)]) assertVm(h, id, 'running');
    assert.deepEqual(sorted(h.runtime.live().map((p) => String(p.pid))), pids, 'the same processes, none killed or added');
    const mark = h.plan.calls.length;
    const again = await fork(h, src.id, 2, { key: 'key-fork-d', resumeParent: true });
    assert.deepEqual(ids(again), ids(first));
    assert.deepEqual(
      h.plan.calls.slice(mark).map((c) => c.call),
      [],
      'nothing was snapshotted or restored',
    );
    assert.equal(h.engine.list().length, 3);
  });

  it('after a restart, the VMs of a keyed fork that never finished are gone, and the retry makes them', async (t) => {
    let h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    // Stands in for a hostd that stopped mid-fork: the second child's agent never answers, so the
    // request never finishes (children settle once all are loaded: it is at the agent wait that
    // one is made and the other is not). That engine is left as it is, as a dead hostd would be.
    h.plan.fail('runtime.waitAgent', { nth: 2, gate: new Promise<void>(() => undefined) });
    void fork(h, snap.id, 2, { key: 'key-fork-e' }).catch(() => undefined);
    // Restarted only once that engine writes no more: the second child waits for its agent, the first
    // is running, on disk too (else its last write could land after the restart's clean-up).
    const onDisk = async (id: string): Promise<string | undefined> =>
      (JSON.parse(await fs.readFile(path.join(h.dataDir, 'vms', id, 'vm.json'), 'utf8')) as { state?: string }).state;
    await pollUntil(
      async () => {
        const made = h.engine.list().find((v) => v.id !== src.id && v.state === 'running');
        return h.plan.armed === 0 && made && (await onDisk(made.id)) === 'running' ? true : undefined;
      },
      { timeoutMs: 2000, what: 'one child made, the other waiting for its agent' },
    );
    assert.equal(h.engine.list().length, 3, 'one child made, one half-made');
    h = await h.restart();
    assert.deepEqual(
      h.engine.list().map((v) => v.id),
      [src.id],
      'the half-made children were removed',
    );
    assert.deepEqual(sorted(h.runtime.live().map((p) => p.spec.id)), [src.id], 'and their processes stopped');
    assert.deepEqual(await vmsWithFiles(h), [src.id], 'and their files');
    const retry = await fork(h, snap.id, 2, { key: 'key-fork-e' });
    assert.equal(retry.children.length, 2);
    for (const c of retry.children) assertVm(h, c.id, 'running');
  });
});

reportDuration('engine delete and keys');
