import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { CorruptPartError, ObjectPartStore, PARTS_BUCKET, startNatsServer, type NatsServer } from '@forky/bus';
import { PAGE, decodeMap, encodeMap, streamObject, sweepParts } from '@forky/bus/internal';

const sha = async (f: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(f))
    .digest('hex');

/** The longest the event loop went without running a 10 ms timer while `work` ran. */
async function maxLag<T>(work: () => Promise<T>): Promise<{ lag: number; ms: number; result: T | Error }> {
  let last = performance.now();
  let lag = 0;
  const t = setInterval(() => {
    const now = performance.now();
    lag = Math.max(lag, now - last);
    last = now;
  }, 10);
  const t0 = performance.now();
  try {
    const result = await work().catch((e: unknown) => e as Error);
    return { lag, ms: performance.now() - t0, result };
  } finally {
    clearInterval(t);
  }
}

describe('chunked parts: hostile sizes, sweeps under a publish, replaced bases (real nats-server)', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  const conns: NatsConnection[] = [];
  let store: ObjectPartStore;
  let raw: ObjectStore;
  let dir: string;
  const open = async (cacheDir?: string): Promise<ObjectPartStore> => {
    const nc = await connect({ servers: nats.url });
    conns.push(nc);
    return ObjectPartStore.open(nc, 1, cacheDir ? { cacheDir } : {});
  };
  /** A parent file and a child with a few pages changed: the child uploads as a delta on the parent. */
  async function lineage(tag: string): Promise<{ p: string; c: string; pd: string; cd: string }> {
    const p = path.join(dir, `${tag}-p.bin`);
    const c = path.join(dir, `${tag}-c.bin`);
    await fs.writeFile(p, randomBytes(512 * PAGE));
    await fs.copyFile(p, c);
    const fh = await fs.open(c, 'r+');
    await fh.write(randomBytes(PAGE), 0, PAGE, 7 * PAGE);
    await fh.close();
    return { p, c, pd: await sha(p), cd: await sha(c) };
  }

  before(async () => {
    nats = await startNatsServer();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkchunks-races-'));
    store = await open(path.join(dir, 'cache'));
    raw = await new Objm(conns[0] as NatsConnection).open(PARTS_BUCKET);
  });

  after(async () => {
    for (const nc of conns) await nc.close();
    await nats.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a 32-byte map declaring 1 TiB: refused against the manifest size; without one, the deadline fires and the loop breathes', async () => {
    const digest = randomBytes(32).toString('hex');
    const map = encodeMap({
      size: 2 ** 40,
      packs: [],
      idx: new Uint32Array(0),
      off: new Uint32Array(0),
      pack: new Uint16Array(0),
      hash: Buffer.alloc(0),
      depth: 0,
    });
    assert.equal(map.length, 32);
    await raw.putBlob({ name: `sha256-${digest}`, metadata: { forky: 'chunks/1' } }, map);
    const refused = await store.download(digest, path.join(dir, 'h1', 'a'), 20_000, undefined, 4096).catch((e: unknown) => e);
    assert.ok(refused instanceof CorruptPartError && refused.details?.field === 'size', String(refused));
    const r = await maxLag(() => store.download(digest, path.join(dir, 'h1', 'b'), 300));
    assert.equal((r.result as { code?: string }).code, 'TIMEOUT', String(r.result));
    assert.ok(r.ms < 10_000, `the fetch stopped ${Math.round(r.ms)} ms after it began`);
    assert.ok(r.lag < 1_000, `the event loop stood still ${Math.round(r.lag)} ms`);
    assert.deepEqual(await fs.readdir(path.join(dir, 'h1')), [], 'nothing left at dest');
  });

  it('a sparse-encoded part declaring 1 TiB of zeros: the same', async () => {
    const digest = randomBytes(32).toString('hex');
    const head = Buffer.alloc(18 + 12);
    head.write('FKSP1\n', 0, 'latin1');
    head.writeBigUInt64BE(2n ** 40n, 6);
    head.writeUInt32BE(65536, 14);
    head.writeBigUInt64BE(2n ** 40n, 18);
    await raw.putBlob({ name: `sha256-${digest}` }, head);
    const refused = await store.download(digest, path.join(dir, 'h1s', 'a'), 20_000, undefined, 4096).catch((e: unknown) => e);
    assert.equal((refused as { details?: { field?: string } }).details?.field, 'size', String(refused));
    const r = await maxLag(() => store.download(digest, path.join(dir, 'h1s', 'b'), 300));
    assert.equal((r.result as { code?: string }).code, 'TIMEOUT', String(r.result));
    assert.ok(r.lag < 1_000 && r.ms < 10_000, `loop stood ${Math.round(r.lag)} ms, stopped after ${Math.round(r.ms)} ms`);
  });

  it("a sweep that listed before a child's publish keeps the child's base and packs", async () => {
    const { p, c, cd } = await lineage('sweep');
    const pd = (await store.upload(p)).digest;
    // The parent's snapshot is deleted (no manifest names it) while the child publishes with it as base.
    let first = true;
    const racing: ObjectStore = Object.create(raw) as ObjectStore;
    racing.list = async () => {
      const l = await raw.list();
      if (first) {
        first = false;
        const up = await store.upload(c, undefined, p);
        assert.ok(up.sentBytes < 64 * PAGE, `the child went as a delta (${up.sentBytes} bytes)`);
        await store.putManifest('child', { state: { digest: cd } });
      }
      return l;
    };
    await sweepParts(racing, 0, async (info) => ({
      packs: ((info.metadata?.packs as string) || '').split(',').filter(Boolean),
      ...(info.metadata?.base ? { base: info.metadata.base } : {}),
    }));
    assert.ok(await store.has(pd), "the child's base is still there");
    const fresh = await open();
    await fresh.download(cd, path.join(dir, 'sweep-out'), 20_000);
    assert.equal(await sha(path.join(dir, 'sweep-out')), cd);
    await store.deleteManifest('child');
  });

  it('a child whose base was swept: the upload puts it again whole, and putManifest names what is broken', async () => {
    const { p, c, cd } = await lineage('broken');
    const pd = (await store.upload(p)).digest;
    await store.upload(c, undefined, p);
    assert.equal((await raw.info(`sha256-${cd}`))?.metadata?.base, pd, 'stored as a delta');
    await raw.delete(`sha256-${pd}`);
    assert.deepEqual((await store.putManifest('broken', { state: { digest: cd } })).broken, [cd]);
    const again = await store.upload(c, undefined, p);
    assert.equal(again.skipped, false, 'not skipped over a broken map');
    assert.equal((await raw.info(`sha256-${cd}`))?.metadata?.base, undefined, 'now a whole map');
    assert.deepEqual((await store.putManifest('broken', { state: { digest: cd } })).broken, []);
    await (await open()).download(cd, path.join(dir, 'broken-out'), 20_000);
    assert.equal(await sha(path.join(dir, 'broken-out')), cd);
    await store.deleteManifest('broken');
  });

  it('a base object replaced by another of the same part does not break its descendants', async () => {
    const { p, c, pd, cd } = await lineage('replaced');
    await store.upload(p);
    await store.upload(c, undefined, p);
    const bytes = Buffer.from((await raw.getBlob(`sha256-${pd}`)) as Uint8Array);
    const before = (await raw.info(`sha256-${pd}`))?.nuid;
    const info = await raw.put(
      { name: `sha256-${pd}`, metadata: { forky: 'chunks/1', packs: decodeMap(bytes, pd).packs.join(',') } },
      new Blob([bytes]).stream(),
    );
    assert.notEqual(info.nuid, before, 'a new object');
    await (await open()).download(cd, path.join(dir, 'replaced-out'), 20_000);
    assert.equal(await sha(path.join(dir, 'replaced-out')), cd);
  });

  it('two fetches of one part to one place both succeed (each its own .partial)', async () => {
    const f = path.join(dir, 'twice.bin');
    await fs.writeFile(f, randomBytes(256 * PAGE));
    const { digest } = await store.upload(f);
    const dest = path.join(dir, 'twice', 'x');
    const a = await open();
    const b = await open();
    await Promise.all([a.download(digest, dest, 20_000), b.download(digest, dest, 20_000)]);
    assert.equal(await sha(dest), digest);
    assert.deepEqual(await fs.readdir(path.join(dir, 'twice')), ['x']);
  });

  it('an upload says whether the part is a chunk map (its manifest is then v 2), also when skipped', async () => {
    const f = path.join(dir, 'kind.bin');
    await fs.writeFile(f, randomBytes(16 * PAGE));
    assert.equal((await store.upload(f)).chunked, true);
    assert.equal((await store.upload(f)).chunked, true, 'also when skipped');
  });

  it('a map whose page hashes lie (its pages are right) is fetched but not cached for reuse', async () => {
    const f = path.join(dir, 'liar.bin');
    await fs.writeFile(f, randomBytes(64 * PAGE));
    const { digest } = await store.upload(f);
    const m = decodeMap(Buffer.from((await raw.getBlob(`sha256-${digest}`)) as Uint8Array), digest);
    m.hash.fill(7, 0, 16);
    await raw.putBlob({ name: `sha256-${digest}`, metadata: { forky: 'chunks/1' } }, encodeMap(m));
    const cache = path.join(dir, 'liar-cache');
    await (await open(cache)).download(digest, path.join(dir, 'liar-out'), 20_000);
    assert.equal(await sha(path.join(dir, 'liar-out')), digest);
    assert.deepEqual(await fs.readdir(cache).catch(() => []), [], 'no map cached');
  });

  it('streamObject: an object whose chunks never come fails after the idle time; a wildcard nuid is refused', async () => {
    const nc = conns[0] as NatsConnection;
    const t0 = performance.now();
    const e = await streamObject(nc, PARTS_BUCKET, { nuid: 'A'.repeat(22), chunks: 5 }, () => true, undefined, 300).catch(
      (x: unknown) => x,
    );
    assert.equal((e as { code?: string }).code, 'TIMEOUT', String(e));
    assert.ok(performance.now() - t0 < 5_000);
    const w = await streamObject(nc, PARTS_BUCKET, { nuid: '*', chunks: 5 }, () => true).catch((x: unknown) => x);
    assert.equal((w as { details?: { field?: string } }).details?.field, 'nuid', String(w));
  });
});
