import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { delay, withDeadline } from '@forky/base';
import { expiryRecorder } from '../helpers/expiry-recorder.js';
import { startEngineHost, type EngineHost, type EngineHostOptions } from '../helpers/engine-host.js';
import { boot, fork, reportDuration, snapsWithFiles } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { MemoryParts } from '../helpers/memory-parts.js';

/**
 * Snapshot retention beside other hosts and the warm pool (review R1 of the lifetimes, findings
 * 2, 3, 7, 8), dry run with an object store in memory: a snapshot this host published never
 * expires (nor one published before records said so); a fetched copy does, leaving the origin's
 * manifest, locator and lineage alone, and fetching it again starts its time over; a transfer's
 * lineage base cannot be deleted under it; the warm pool does not keep a snapshot.
 */
const RETENTION_MS = 1000;
/** Well past a retention. */
const STAYS_MS = 1600;
const IMAGE_DISK = 'd'.repeat(64);

const recorder = expiryRecorder;
type Sink = ReturnType<typeof recorder>;

type Start = (o: EngineHostOptions) => Promise<[EngineHost, Sink]>;

/** Hosts of one test (`restart` gives the restarted one), removed when it ends. */
async function withHosts(run: (start: Start, restart: (h: EngineHost) => Promise<EngineHost>) => Promise<void>): Promise<void> {
  const hosts = new Set<EngineHost>();
  try {
    await run(
      async (o) => {
        const sink = recorder();
        const h = await startEngineHost({ ...o, events: sink });
        hosts.add(h);
        return [h, sink];
      },
      async (h) => {
        hosts.delete(h);
        const next = await h.restart();
        hosts.add(next);
        return next;
      },
    );
  } finally {
    for (const h of hosts) await h.close();
  }
}

/** A snapshot of a VM that is then destroyed: nothing here uses it from now on. */
async function leftAlone(h: EngineHost): Promise<string> {
  const vm = await boot(h);
  const snap = await h.engine.snapshot({ vm: vm.id, resume: true });
  await h.engine.destroy(vm.id);
  return snap.id;
}

const listed = (h: EngineHost, id: string): boolean => h.engine.listSnapshots().some((s) => s.id === id);
const retention = (ms: number) => ({ limits: { snapshotRetentionMs: ms } });

describe('snapshot retention with other hosts (dry run)', { concurrency: true }, () => {
  it('a snapshot this host published never expires; one published before its record said so is found and kept', async () => {
    await withHosts(async (start, restart) => {
      const parts = new MemoryParts(IMAGE_DISK);
      const [first, sink] = await start({ ...retention(RETENTION_MS), parts });
      let h = first;
      const published = await leftAlone(h);
      await h.engine.publish(published);
      const older = await leftAlone(h);
      await h.engine.publish(older);
      // As an older hostd left it: published, but its record does not say so.
      const file = path.join(h.dataDir, 'snapshots', older, 'snapshot.json');
      const { published: _p, ...rec } = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
      assert.equal(_p, true, 'the publish was recorded');
      await fs.writeFile(file, JSON.stringify(rec));
      h = await restart(h);
      const other = await leftAlone(h);
      await sink.expired(other);
      await delay(STAYS_MS - RETENTION_MS);
      for (const id of [published, older]) {
        assert.ok(listed(h, id), `${id} is still here`);
        assert.equal(h.engine.showSnapshot(id).expiresAt, undefined);
        assert.ok(!sink.saidOf(id));
        assert.ok(parts.manifests.has(id), 'its manifest is still in the store');
      }
      const again = JSON.parse(await fs.readFile(file, 'utf8')) as { published?: boolean };
      assert.equal(again.published, true, 'found published, and recorded so');
    });
  });

  it("a fetched copy expires here, leaving the origin's manifest, locator and lineage alone", async () => {
    await withHosts(async (start) => {
      const parts = new MemoryParts(IMAGE_DISK);
      const [a] = await start({ ...retention(0), parts, hostId: 'h-a' });
      const [b, sinkB] = await start({ ...retention(RETENTION_MS), parts, hostId: 'h-b' });
      const id = await leftAlone(a);
      await a.engine.publish(id);
      await b.engine.fetch(id);
      await sinkB.expired(id);
      assert.ok(!listed(b, id), 'the copy is gone from B');
      assert.ok(
        !b.directory.log.some((l) => l.endsWith(` ${id}`)),
        `B told the directory nothing of ${id} (${b.directory.log.join('; ')})`,
      );
      assert.ok(parts.manifests.has(id), 'the manifest stays');
      assert.ok(listed(a, id) && a.directory.snaps.has(id) && a.directory.lineage.has(id), 'the origin still holds it');
    });
  });

  it('a fetch of a copy already held starts its time over (a fork is to follow)', async () => {
    await withHosts(async (start) => {
      const parts = new MemoryParts(IMAGE_DISK);
      const [a] = await start({ ...retention(0), parts, hostId: 'h-a' });
      const [b, sinkB] = await start({ ...retention(RETENTION_MS), parts, hostId: 'h-b' });
      const id = await leftAlone(a);
      await a.engine.publish(id);
      // Fetched, and again shortly before it would expire: counted from the second fetch.
      await b.engine.fetch(id);
      await delay(RETENTION_MS * 0.7);
      const refetched = Date.now();
      await b.engine.fetch(id);
      await delay(RETENTION_MS * 0.6);
      assert.ok(listed(b, id), 'still held past a retention after the first fetch');
      await sinkB.expired(id);
      assert.ok(Date.now() - refetched >= RETENTION_MS - 100, `expired ${Date.now() - refetched} ms after the second fetch`);
    });
  });

  it("a transfer's lineage base is held for the transfer: it cannot be deleted under it", async () => {
    await withHosts(async (start) => {
      const parts = new MemoryParts(IMAGE_DISK);
      // maxChainDepth 2 flattens the VM's disk after each snapshot: only the lineage ties the two.
      const [a] = await start({ ...retention(0), parts, limits: { snapshotRetentionMs: 0, maxChainDepth: 2 }, hostId: 'h-a' });
      const [b] = await start({ ...retention(0), parts, hostId: 'h-b' });
      const vm = await boot(a);
      const parent = await a.engine.snapshot({ vm: vm.id, resume: true });
      const child = await a.engine.snapshot({ vm: vm.id, resume: true });
      assert.equal(child.parentSnapshot, parent.id);
      await a.engine.destroy(vm.id);
      await a.engine.publish(parent.id);
      await b.engine.fetch(parent.id);

      let open!: () => void;
      parts.uploadGate = new Promise<void>((resolve) => (open = resolve));
      const publishing = a.engine.publish(child.id);
      await parts.atGate();
      assert.equal((await refused(a.engine.deleteSnapshot(parent.id))).code, 'CONFLICT', 'the publish base is held');
      open();
      parts.uploadGate = undefined;
      await publishing;

      parts.downloadGate = new Promise<void>((resolve) => (open = resolve));
      const fetching = b.engine.fetch(child.id);
      await parts.atGate();
      assert.equal((await refused(b.engine.deleteSnapshot(parent.id))).code, 'CONFLICT', 'the fetch base is held');
      open();
      parts.downloadGate = undefined;
      await fetching;
      // Once the transfers are over, nothing holds it.
      await a.engine.deleteSnapshot(parent.id);
      await b.engine.deleteSnapshot(parent.id);
    });
  });

  it('the warm pool does not keep a snapshot from expiring; its deletion drops the pool', async () => {
    await withHosts(async (start) => {
      const [h, sink] = await start({ ...retention(RETENTION_MS), pool: { size: 1, maxSnapshots: 1 } });
      const src = await boot(h);
      const f = await fork(h, src.id, 1);
      const id = f.snapshot.id;
      await withDeadline(
        (async () => {
          while (h.engine.warmCount(id) < 1) await delay(20);
        })(),
        2000,
        'the warm pool filling',
      );
      for (const v of [...f.children.map((c) => c.id), src.id]) await h.engine.destroy(v);
      await sink.expired(id);
      assert.equal(h.engine.warmCount(id), 0);
      assert.ok(!(await snapsWithFiles(h)).includes(id));
    });
  });
});

reportDuration('snapshot retention with other hosts (review R1)');
