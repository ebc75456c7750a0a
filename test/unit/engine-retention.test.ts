import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { delay } from '@forky/base';
import type { EngineLimits } from '@forky/hostd';
import { expiryRecorder } from '../helpers/expiry-recorder.js';
import { startEngineHost, type EngineHost } from '../helpers/engine-host.js';
import { boot, fork, snapsWithFiles } from '../helpers/engine-checks.js';

/**
 * Snapshot retention (services/hostd/src/domain/retention.ts) on the dry-run engine: a snapshot
 * nothing uses and that is not `keep` is deleted `snapshotRetentionMs` after it was last in use,
 * with an `expired` event naming it; one in use never expires.
 */
const RETENTION_MS = 1000;
/** How long a snapshot left alone may take to go: its retention, then the sweep it is due at. */
/** How long a snapshot that must stay is watched: well past its retention. */
const STAYS_MS = 1600;

const recorder = expiryRecorder;

async function withHost(
  limits: Partial<EngineLimits>,
  run: (h: EngineHost, sink: ReturnType<typeof recorder>) => Promise<void>,
): Promise<void> {
  const sink = recorder();
  const h = await startEngineHost({ limits, events: sink });
  try {
    await run(h, sink);
  } finally {
    await h.close();
  }
}

/** A snapshot of a VM that is then destroyed: nothing uses it from now on. */
async function leftAlone(h: EngineHost, keep = false): Promise<string> {
  const vm = await boot(h);
  const snap = await h.engine.snapshot({ vm: vm.id, resume: true, keep });
  assert.equal(h.engine.showSnapshot(snap.id).expiresAt, undefined, 'its VM runs on it: no expiry');
  await h.engine.destroy(vm.id);
  return snap.id;
}

/** The snapshot is gone the way `snapshot rm` removes it: record, files, locator and lineage entries. */
async function assertGone(h: EngineHost, id: string): Promise<void> {
  assert.ok(!h.engine.listSnapshots().some((s) => s.id === id), `${id} is no longer listed`);
  assert.ok(!(await snapsWithFiles(h)).includes(id), `${id} left no files`);
  assert.ok(!h.directory.snaps.has(id), `${id} is out of the locator`);
  assert.ok(!h.directory.lineage.has(id), `${id} is out of the lineage`);
}

describe('snapshot retention (dry run)', { concurrency: true }, () => {
  it('an unused snapshot is deleted within 3 s of its last use, with an expired event naming it', async () => {
    await withHost({ snapshotRetentionMs: RETENTION_MS }, async (h, sink) => {
      const id = await leftAlone(h);
      const t0 = Date.now();
      const expiresAt = Date.parse(h.engine.showSnapshot(id).expiresAt ?? '');
      assert.ok(Math.abs(expiresAt - (t0 + RETENTION_MS)) < 500, `expiresAt is a retention after its last use (${expiresAt - t0} ms)`);
      const e = await sink.expired(id);
      const ms = Date.now() - t0;
      assert.ok(ms >= RETENTION_MS - 100, `not before its time (${ms} ms)`);
      assert.equal(e.host, 'h-test');
      assert.equal(e.vm, undefined, 'the event is the snapshot’s, not its VM’s');
      await assertGone(h, id);
    });
  });

  it('a snapshot a forked child runs on stays while the child lives, and expires once it is destroyed', async () => {
    await withHost({ snapshotRetentionMs: RETENTION_MS }, async (h, sink) => {
      const src = await boot(h);
      const f = await fork(h, src.id, 1);
      const id = f.snapshot.id;
      const child = f.children[0]?.id as string;
      await h.engine.destroy(src.id);
      // A snapshot of a VM left alone beside it: the sweep runs, and still spares the child's.
      const other = await leftAlone(h);
      await sink.expired(other);
      await delay(Math.max(0, STAYS_MS - RETENTION_MS));
      assert.equal(h.engine.showSnapshot(id).expiresAt, undefined, 'in use: no expiry time');
      assert.ok((await snapsWithFiles(h)).includes(id));
      const t0 = Date.now();
      await h.engine.destroy(child);
      await sink.expired(id);
      assert.ok(Date.now() - t0 >= RETENTION_MS - 100, 'counted from when the child went');
      await assertGone(h, id);
    });
  });

  it('a keep snapshot (a template’s) never expires', async () => {
    await withHost({ snapshotRetentionMs: RETENTION_MS }, async (h, sink) => {
      const kept = await leftAlone(h, true);
      const other = await leftAlone(h);
      await sink.expired(other);
      await delay(STAYS_MS - RETENTION_MS);
      const info = h.engine.showSnapshot(kept);
      assert.equal(info.keep, true);
      assert.equal(info.expiresAt, undefined);
      assert.ok(!sink.events.some((e) => e.kind === 'expired' && e.snapshot === kept));
    });
  });

  it('a parent snapshot with a descendant here stays until the descendant goes', async () => {
    // maxChainDepth 2 flattens the VM's disk after each snapshot: the second one's chain does not
    // run through the first one's layer, so only the lineage ties them.
    await withHost({ snapshotRetentionMs: RETENTION_MS, maxChainDepth: 2 }, async (h, sink) => {
      const vm = await boot(h);
      const parent = await h.engine.snapshot({ vm: vm.id, resume: true });
      const child = await h.engine.snapshot({ vm: vm.id, resume: true });
      assert.equal(child.parentSnapshot, parent.id);
      await h.engine.destroy(vm.id);
      const first = await sink.expired(child.id);
      assert.ok(
        h.engine.listSnapshots().some((s) => s.id === parent.id),
        'the parent is still here when its descendant expires',
      );
      const second = await sink.expired(parent.id);
      const gap = Date.parse(second.at) - Date.parse(first.at);
      assert.ok(gap >= RETENTION_MS - 100, `the parent's time counts from its descendant's deletion (${gap} ms)`);
      await assertGone(h, parent.id);
    });
  });

  it('retention 0 never expires a snapshot', async () => {
    await withHost({ snapshotRetentionMs: 0 }, async (h, sink) => {
      const id = await leftAlone(h);
      await delay(STAYS_MS);
      assert.equal(h.engine.showSnapshot(id).expiresAt, undefined);
      assert.ok((await snapsWithFiles(h)).includes(id));
      assert.ok(!sink.events.some((e) => e.kind === 'expired'));
    });
  });

  it('after a restart, an unused snapshot’s time is counted again from the recovery, then it expires', async () => {
    const sink = recorder();
    let h = await startEngineHost({ limits: { snapshotRetentionMs: RETENTION_MS }, events: sink });
    try {
      const id = await leftAlone(h);
      const before = Date.parse(h.engine.showSnapshot(id).expiresAt ?? '');
      await delay(RETENTION_MS * 0.3);
      const t0 = Date.now();
      h = await h.restart();
      const after = Date.parse(h.engine.showSnapshot(id).expiresAt ?? '');
      assert.ok(after >= t0 + RETENTION_MS - 50, `recovery time + retention (${after - t0} ms), not the old ${before - t0} ms`);
      await sink.expired(id);
      await assertGone(h, id);
    } finally {
      await h.close();
    }
  });
});
