import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { createLogger, withDeadline } from '@forky/base';
import { ObjectPartStore, PARTS_BUCKET, request, startNatsServer, startService, type NatsServer } from '@forky/bus';
import { hostdContract } from '@forky/contract';
import { startEphemeralHostd } from '@forky/hostd';
import { testLogger } from '../helpers/hostd.js';
import { IMAGES_DIR } from '../helpers/repo.js';
import { refused } from '../helpers/errors.js';

type WaitManifest = (
  nc: NatsConnection,
  os: ObjectStore,
  id: string,
  timeoutMs: number,
  read: () => Promise<unknown>,
  staleMs?: number,
) => Promise<unknown>;
interface Publishing {
  waitManifest: WaitManifest;
  PublishMarkers: new (os: ObjectStore, refreshMs?: number) => { end(id: string, host: string): Promise<void> };
}
/** The module itself (review R3's proof reached into it too): the races need a store that acts between two looks. */
const publishing = (await import(new URL('./parts-publishing.js', import.meta.resolve('@forky/bus')).href)) as Publishing;

/**
 * Publish markers (libs/bus/src/parts-publishing.ts) on a real nats-server: a publish that ends
 * between a fetch's looks is seen as published; a marker not renewed (crashed or lying publisher)
 * is no publish (NOT_FOUND, soon); a host removes its own markers; a wait ends with its caller.
 */
describe('publish markers: no false failures, no waits on dead publishes', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let os: ObjectStore;
  let store: ObjectPartStore;
  const enc = new TextEncoder();
  const marker = (id: string, host: string, at: number): Promise<unknown> =>
    os.putBlob({ name: `publishing.${id}`, metadata: { state: 'running', host, at: String(at) } }, new Uint8Array(0));
  /** The store, finishing a publish of `id` (manifest in, marker gone) right after its `n`th look at the manifest. */
  const racing = (id: string, n: number): ObjectStore => {
    let looks = 0;
    return new Proxy(os, {
      get(t, k) {
        const f = Reflect.get(t, k) as unknown;
        if (typeof f !== 'function') return f;
        if (k !== 'info') return (f as (...a: unknown[]) => unknown).bind(t);
        return async (name: string) => {
          const r = (await t.info(name)) as unknown;
          if (name === `manifest.${id}` && ++looks === n) {
            await t.putBlob({ name: `manifest.${id}` }, enc.encode('{"ok":true}'));
            await new publishing.PublishMarkers(t).end(id, 'h-a');
          }
          return r;
        };
      },
    });
  };
  const read = async (): Promise<string> => 'MANIFEST';

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    store = await ObjectPartStore.open(nc, 1, { markers: { refreshMs: 100, staleMs: 600 } });
    os = await new Objm(nc).open(PARTS_BUCKET);
  });
  after(async () => {
    await nc.close();
    await nats.stop();
  });

  it('a publish that ends between the looks at the manifest and at the marker is seen as published', async () => {
    for (const n of [1, 2]) {
      const id = `snap-race-${n}`;
      await marker(id, 'h-a', Date.now());
      assert.equal(await publishing.waitManifest(nc, racing(id, n), id, 5_000, read), 'MANIFEST', `race after look ${n}`);
    }
  });

  it('a stale or future-dated marker is no publish: NOT_FOUND soon, not TIMEOUT after the whole wait', async () => {
    await marker('snap-old', 'h-b', Date.now() - 11 * 60_000);
    let t0 = Date.now();
    const old = await refused(publishing.waitManifest(nc, os, 'snap-old', 5_000, read));
    assert.equal(old.code, 'NOT_FOUND', old.message);
    assert.match(old.message, /h-b.*not renewed/);
    assert.ok(Date.now() - t0 < 1_000, 'at once');
    // A writer's clock far ahead counts as the reader's now: no renewal within staleMs, no publish.
    await marker('snap-future', 'h-c', Date.now() + 1e12);
    t0 = Date.now();
    const fut = await refused(publishing.waitManifest(nc, os, 'snap-future', 5_000, read, 300));
    assert.equal(fut.code, 'NOT_FOUND', fut.message);
    assert.ok(Date.now() - t0 < 3_000, `ended after ${Date.now() - t0} ms, before the 5 s wait`);
  });

  it('a renewed marker keeps fetches waiting past staleMs; its end lets them see the manifest', async () => {
    const id = 'snap-long';
    await store.markPublishing(id, 'h-a');
    const waiting = store.waitManifest(id, 10_000);
    // Past three times staleMs (600 ms), renewed every 100 ms: still a publish under way.
    await new Promise((r) => setTimeout(r, 1_800));
    await store.putManifest(id, { chain: [] });
    await store.endPublishing(id, 'h-a');
    assert.deepEqual(await waiting, { chain: [] });
    const info = await os.info(`publishing.${id}`);
    assert.ok(!info || info.deleted, 'the marker is gone, no renewal brought it back');
  });

  it("a host's start removes its own markers, not others'", async () => {
    await marker('snap-mine', 'h-me', Date.now());
    await marker('snap-theirs', 'h-other', Date.now());
    assert.equal(await store.clearMarkers('h-me'), 1);
    assert.equal((await refused(store.waitManifest('snap-mine', 5_000))).code, 'NOT_FOUND');
    const theirs = await os.info('publishing.snap-theirs');
    assert.ok(theirs && !theirs.deleted, 'the other host’s marker stays');
    await os.delete('publishing.snap-theirs');
  });

  it('hostd, starting, removes the markers its last run left', async () => {
    await marker('snap-lastrun00001', 'pm-host', Date.now());
    await marker('snap-elsewhere001', 'pm-other', Date.now());
    const host = await startEphemeralHostd({
      natsUrl: nats.url,
      imagesDir: IMAGES_DIR,
      logger: testLogger(),
      hostId: 'pm-host',
      overrides: { dryRun: true, pool: { size: 0 } },
    });
    try {
      const mine = await os.info('publishing.snap-lastrun00001');
      assert.ok(!mine || mine.deleted, 'its own marker is gone once it serves');
      const other = await os.info('publishing.snap-elsewhere001');
      assert.ok(other && !other.deleted, 'another host’s stays');
    } finally {
      await host.stop();
      await os.delete('publishing.snap-elsewhere001');
    }
  });

  it("a fetch served for a caller waits no longer than that caller's deadline", async () => {
    const id = 'snap-slowwait0001';
    await marker(id, 'h-d', Date.now());
    const slow = await ObjectPartStore.open(nc, 1, { markers: { staleMs: 60_000 } });
    let done!: (v: { ms: number; code: string }) => void;
    const ended = new Promise<{ ms: number; code: string }>((r) => (done = r));
    const svc = await startService(
      nc,
      { name: 'fetch-wait', version: '0.0.1', description: 'a fetch that waits for a publish' },
      [
        {
          name: 'fetch',
          subject: 'test.fetch-wait',
          request: hostdContract['snapshot.fetch'].request,
          reply: hostdContract['snapshot.fetch'].reply,
          handler: async () => {
            const t0 = Date.now();
            const e = await refused(slow.waitManifest(id, 10 * 60_000));
            done({ ms: Date.now() - t0, code: e.code });
            throw e;
          },
        },
      ],
      createLogger({ level: 'error', name: 'test' }),
    );
    try {
      const e = await refused(request(nc, 'test.fetch-wait', { id }, { timeoutMs: 1_500 }));
      assert.equal(e.code, 'TIMEOUT');
      const w = await withDeadline(ended, 5_000, 'the wait of the fetch whose caller gave up');
      assert.equal(w.code, 'TIMEOUT');
      assert.ok(w.ms < 3_000, `the wait ended with its caller, after ${w.ms} ms`);
    } finally {
      await svc.stop();
      await os.delete(`publishing.${id}`);
    }
  });
});
