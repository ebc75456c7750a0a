import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { CorruptPartError, ObjectPartStore, PARTS_BUCKET, startNatsServer, type NatsServer } from '@forky/bus';
import { PAGE, decodeMap, encodeMap, encodeSparse } from '@forky/bus/internal';

const sha = async (f: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(f))
    .digest('hex');
const MiB = 1 << 20;

/** A RAM file's shape: 64 MiB, the first 40 MiB random, the rest a hole. */
async function ramLike(file: string): Promise<void> {
  const fh = await fs.open(file, 'w');
  await fh.truncate(64 * MiB);
  for (let at = 0; at < 40 * MiB; at += 4 * MiB) await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, at);
  await fh.close();
}

/** A copy of `src` with `n` distinct scattered pages overwritten (some in its hole); returns the pages. */
async function dirty(src: string, dest: string, n: number): Promise<Set<number>> {
  await fs.copyFile(src, dest);
  const pages = new Set<number>();
  while (pages.size < n) pages.add(randomInt(0, (64 * MiB) / PAGE));
  const fh = await fs.open(dest, 'r+');
  for (const p of pages) await fh.write(randomBytes(PAGE), 0, PAGE, p * PAGE);
  await fh.close();
  return pages;
}

describe('chunked parts: a re-snapshot moves only its dirtied pages (real nats-server)', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  const conns: NatsConnection[] = [];
  let a: ObjectPartStore;
  let b: ObjectPartStore;
  let raw: ObjectStore;
  let dir: string;
  const open = async (cacheDir?: string): Promise<ObjectPartStore> => {
    const nc = await connect({ servers: nats.url });
    conns.push(nc);
    return ObjectPartStore.open(nc, 1, cacheDir ? { cacheDir } : {});
  };

  before(async () => {
    nats = await startNatsServer();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkchunks-'));
    // Two hosts: each its own connection and chunk-map cache.
    a = await open(path.join(dir, 'cache-a'));
    b = await open(path.join(dir, 'cache-b'));
    raw = await new Objm(conns[0] as NatsConnection).open(PARTS_BUCKET);
  });

  after(async () => {
    for (const nc of conns) await nc.close();
    await nats.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const N = 300;
  let v1: string;
  let v2: string;
  let got1: string;

  it('first publish sends the non-zero pages once; the fetch is whole, verified and sparse', async () => {
    v1 = path.join(dir, 'v1.ram');
    await ramLike(v1);
    const up = await a.upload(v1);
    assert.equal(up.digest, await sha(v1));
    assert.ok(up.sentBytes >= 40 * MiB && up.sentBytes < 41 * MiB, `sent ${up.sentBytes} for 40 MiB of data`);
    got1 = path.join(dir, 'b', 'v1.ram');
    const r = await b.download(up.digest, got1, 30_000);
    assert.ok(r.receivedBytes < 41 * MiB, `received ${r.receivedBytes}`);
    assert.equal(await sha(got1), up.digest);
    assert.ok((await fs.stat(got1)).blocks * 512 <= 41 * MiB, 'the hole stayed a hole');
  });

  it(`a copy with ${N} pages changed moves < 2× those pages, each way, and arrives byte-identical`, async () => {
    v2 = path.join(dir, 'v2.ram');
    await dirty(v1, v2, N);
    const bound = 2 * N * PAGE;
    const up = await a.upload(v2, undefined, v1);
    assert.equal(up.digest, await sha(v2));
    assert.ok(up.sentBytes <= bound, `uploaded ${up.sentBytes} bytes for ${N} dirtied pages (bound ${bound})`);
    const dest = path.join(dir, 'b', 'v2.ram');
    const r = await b.download(up.digest, dest, 30_000, got1);
    assert.ok(r.receivedBytes <= bound, `fetched ${r.receivedBytes} bytes for ${N} dirtied pages (bound ${bound})`);
    assert.equal(await sha(dest), up.digest);
    assert.ok((await fs.stat(dest)).blocks * 512 <= 42 * MiB, 'sparse');
    // A host with no cache (a restart) hashes its base once and still fetches only what differs.
    const c = await open();
    const dest3 = path.join(dir, 'c', 'v2.ram');
    const r3 = await c.download(up.digest, dest3, 30_000, got1);
    assert.ok(r3.receivedBytes <= bound, `fetched ${r3.receivedBytes} without a cache`);
    assert.equal(await sha(dest3), up.digest);
    // Without the base the whole part comes, from both packs.
    const dest4 = path.join(dir, 'c', 'v2-whole.ram');
    const r4 = await c.download(up.digest, dest4, 30_000);
    assert.ok(r4.receivedBytes >= 40 * MiB, `fetched ${r4.receivedBytes} without a base`);
    assert.equal(await sha(dest4), up.digest);
  });

  it("sweeps keep a live map's packs and its delta base, and drop them with the last manifest", async () => {
    const d1 = (await a.upload(v1)).digest;
    const d2 = (await a.upload(v2)).digest;
    const stray = path.join(dir, 'stray.bin');
    await fs.writeFile(stray, randomBytes(3 * PAGE));
    const d3 = (await a.upload(stray)).digest;
    await a.putManifest('snap-cccccccccccc', { chain: [], state: { digest: d2 }, ram: { digest: d2 } });
    await a.sweep(0);
    assert.equal(await a.has(d3), false, 'the unreferenced part is gone');
    assert.equal(await a.has(d1), true, "v1's map stays: v2's map lists only what differs from it");
    // A host with neither file nor cache reads v2 whole: its map resolved through v1's, v1's pack kept.
    const dest = path.join(dir, 'd', 'v2-after-sweep.ram');
    await (await open()).download(d2, dest, 30_000);
    assert.equal(await sha(dest), d2);
    await a.deleteManifest('snap-cccccccccccc');
    await a.sweep(0);
    const left = (await raw.list()).filter((o) => !o.deleted && /^(pack|sha256)-/.test(o.name));
    assert.deepEqual(left, [], 'no map and no pack left');
  });

  it('still reads a part published sparse-encoded, as before chunk maps', async () => {
    const f = path.join(dir, 'old.bin');
    await fs.writeFile(f, Buffer.concat([randomBytes(100_000), Buffer.alloc(200_000), randomBytes(7)]));
    const digest = await sha(f);
    const gen = encodeSparse(f, { sent: 0 });
    await raw.put({ name: `sha256-${digest}` }, ReadableStream.from(gen));
    const dest = path.join(dir, 'b', 'old.bin');
    await b.download(digest, dest, 30_000);
    assert.equal(await sha(dest), digest);
  });
});

describe('chunked parts: a chunk map that lies (real nats-server)', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let store: ObjectPartStore;
  let raw: ObjectStore;
  let dir: string;
  let good: Buffer;
  let digest: string;

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    store = await ObjectPartStore.open(nc);
    raw = await new Objm(nc).open(PARTS_BUCKET);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkchunks-bad-'));
    const f = path.join(dir, 'real.bin');
    await fs.writeFile(f, randomBytes(64 * PAGE));
    digest = (await store.upload(f)).digest;
    good = Buffer.from((await raw.getBlob(`sha256-${digest}`)) as Uint8Array);
  });

  after(async () => {
    await nc.close();
    await nats.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** Puts `map` as the part `digest` (the store is writable by every host) and fetches it. */
  async function fetchLie(map: Buffer, name: string): Promise<unknown> {
    await raw.putBlob({ name: `sha256-${digest}`, metadata: { forky: 'chunks/1' } }, map);
    const dest = path.join(dir, 'out', name);
    const rss = process.memoryUsage().rss;
    const err = await store.download(digest, dest, 20_000).then(
      () => assert.fail(`the ${name} map was accepted`),
      (e: unknown) => e,
    );
    assert.ok(process.memoryUsage().rss - rss < 64 * MiB, 'memory stayed bounded');
    assert.deepEqual(await fs.readdir(path.join(dir, 'out')).catch(() => []), [], 'no part and no .partial at dest');
    return err;
  }

  it('a map whose entries point at the wrong pages: caught by the digest', async () => {
    const m = decodeMap(good, digest);
    [m.off[0], m.off[1]] = [m.off[1] as number, m.off[0] as number];
    const e = await fetchLie(encodeMap(m), 'swapped');
    assert.ok(e instanceof CorruptPartError, String(e));
    assert.match(e.message, /arrived with digest/);
  });

  it('a truncated map, offsets past its pack, a huge count, a page size of its own', async () => {
    const cut = await fetchLie(good.subarray(0, good.length - 5), 'cut');
    assert.ok(cut instanceof CorruptPartError && cut.details?.field === 'length', String(cut));
    const m = decodeMap(good, digest);
    m.off[3] = 1 << 20;
    const past = await fetchLie(encodeMap(m), 'past');
    assert.ok(past instanceof CorruptPartError && past.details?.field === 'off', String(past));
    for (const [at, value, field] of [
      [24, 0xffffffff, 'entries'],
      [20, 0xffff, 'packs'],
      [16, 512, 'page'],
    ] as const) {
      const huge = Buffer.from(good);
      huge.writeUInt32LE(value, at);
      if (field === 'entries') huge.writeBigUInt64LE(2n ** 40n, 8);
      const e = await fetchLie(huge, field);
      assert.ok(e instanceof CorruptPartError, String(e));
      assert.ok(['entries', 'length', 'packs', field].includes(String(e.details?.field)), String(e));
    }
    const big = Buffer.from(good);
    big.writeBigUInt64LE(2n ** 50n, 8);
    const size = await fetchLie(big, 'size');
    assert.ok(size instanceof CorruptPartError && size.details?.field === 'size', String(size));
  });

  it('a delta against a base object that is not there, or deltas deeper than 4: typed errors', async () => {
    const m = decodeMap(good, digest);
    const other = 'cd'.repeat(32);
    const gone = await fetchLie(encodeMap({ ...m, base: { digest: other, nuid: 'nosuchobject' }, depth: 1 }), 'nobase');
    assert.ok(gone instanceof CorruptPartError && gone.details?.field === 'base', String(gone));
    // A chain of deltas, each on the one before, every one claiming depth 1.
    let below = { digest, nuid: (await raw.info(`sha256-${digest}`))?.nuid as string };
    for (let k = 0; k < 5; k++) {
      const d = randomBytes(32).toString('hex');
      const info = await raw.putBlob({ name: `sha256-${d}`, metadata: { forky: 'chunks/1' } }, encodeMap({ ...m, base: below, depth: 1 }));
      below = { digest: d, nuid: info.nuid };
    }
    const dest = path.join(dir, 'out', 'deep');
    const deep = await store.download(below.digest, dest, 20_000).then(
      () => assert.fail('a delta chain 5 deep was resolved'),
      (e: unknown) => e,
    );
    assert.ok(deep instanceof CorruptPartError && deep.details?.field === 'depth', String(deep));
    assert.deepEqual(await fs.readdir(path.join(dir, 'out')).catch(() => []), []);
  });

  it('a map naming a pack the store lacks: not found, nothing written', async () => {
    const m = decodeMap(good, digest);
    m.packs[0] = 'ab'.repeat(32);
    const e = (await fetchLie(encodeMap(m), 'nopack')) as { code?: string };
    assert.equal(e.code, 'NOT_FOUND');
  });
});
