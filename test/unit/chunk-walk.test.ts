import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CorruptPartError } from '@forky/bus';
import { ChunkMapCache, PAGE, assemble, byHash, encodeMap, walk, type ChunkMap } from '@forky/bus/internal';

const whole = (idx: Uint32Array, size: number, hash = Buffer.alloc(16 * idx.length)): ChunkMap => ({
  size,
  packs: [],
  idx,
  off: new Uint32Array(idx.length),
  pack: new Uint16Array(idx.length),
  hash,
  depth: 0,
});

describe('chunk walks and indexes: short writes, huge maps, memory, the cache', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkwalk-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('pages copied from the base land whole in the file even when the disk takes a few bytes a write', async () => {
    const pages = 600;
    const base = path.join(dir, 'base.bin');
    await fs.writeFile(base, randomBytes(pages * PAGE));
    const bfh = await fs.open(base, 'r');
    const real = await fs.open(path.join(dir, 'out.bin'), 'w+');
    // The out file as a nearly full disk gives it: at most 1000 bytes a write.
    const out = Object.create(real) as fs.FileHandle;
    out.write = ((buf: Buffer, off: number, len: number, pos: number) =>
      real.write(buf, off, Math.min(len, 1000), pos)) as unknown as fs.FileHandle['write'];
    const idx = Uint32Array.from({ length: pages }, (_, i) => i);
    try {
      const got = await walk({
        map: whole(idx, pages * PAGE),
        src: Int32Array.from(idx),
        out,
        base: bfh,
        until: async () => {},
        signal: new AbortController().signal,
      });
      const file = createHash('sha256')
        .update(await fs.readFile(path.join(dir, 'out.bin')))
        .digest('hex');
      assert.equal(file, got.digest, 'the file holds what was hashed');
    } finally {
      await bfh.close();
      await real.close();
    }
  });

  it('a map of 2^22 entries or more is refused, typed, before anything is written', async () => {
    const n = 2 ** 22;
    const out = await fs.open(path.join(dir, 'big.bin'), 'w+');
    try {
      const e = await assemble({
        map: {
          ...whole(
            Uint32Array.from({ length: n }, (_, i) => i),
            n * PAGE,
          ),
          packs: ['ab'.repeat(32)],
        },
        what: 'big',
        out,
        packSize: () => n * PAGE,
        readPack: async () => 0,
        signal: new AbortController().signal,
        parallel: 1,
      }).catch((x: unknown) => x);
      assert.ok(e instanceof CorruptPartError && e.details?.field === 'entries', String(e));
      assert.equal((await out.stat()).size, 0);
    } finally {
      await out.close();
    }
  });

  it('an index of a million page hashes finds each and takes under 40 bytes a page', () => {
    const n = 1 << 20;
    const hash = randomBytes(16 * n);
    hash.copy(hash, 16 * 5, 16 * 3, 16 * 4); // entry 5 repeats entry 3: the first wins
    const mem = (): number => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    const m0 = mem();
    const at = byHash(whole(new Uint32Array(n), n * PAGE, hash));
    const per = (mem() - m0) / n;
    assert.ok(per < 40, `${per.toFixed(1)} bytes a page`);
    for (const i of [0, 1, 3, 77, n - 1]) assert.equal(at.get(hash, 16 * i), i);
    assert.equal(at.get(hash, 16 * 5), 3);
    assert.equal(at.get(randomBytes(16), 0), -1);
  });

  it('the map cache: concurrent puts of one digest, stale .tmp pruned, disk bounded by bytes', async () => {
    const cdir = path.join(dir, 'cache');
    await fs.mkdir(cdir);
    const stale = path.join(cdir, `${'e'.repeat(64)}.fkcm.1.dead.tmp`);
    await fs.writeFile(stale, 'x');
    await fs.utimes(stale, new Date(0), new Date(0));
    const cache = new ChunkMapCache(cdir, 1 << 20, 64 << 10);
    const idx = Uint32Array.from({ length: 1000 }, (_, i) => i);
    const map = encodeMap({ ...whole(idx, 1000 * PAGE, randomBytes(16000)), packs: ['ab'.repeat(32)] });
    const d = 'a'.repeat(64);
    await Promise.all([cache.put(d, 'n1', map), cache.put(d, 'n2', map)]);
    assert.ok(['n1', 'n2'].includes((await new ChunkMapCache(cdir).get(d))?.nuid as string), 'one whole file');
    await assert.rejects(fs.stat(stale), 'the stale .tmp is gone');
    for (let k = 0; k < 40; k++) await cache.put(k.toString(16).padStart(64, '0'), 'n', map);
    const names = await fs.readdir(cdir);
    const bytes = (await Promise.all(names.map((x) => fs.stat(path.join(cdir, x))))).reduce((a, s) => a + s.size, 0);
    assert.ok(bytes <= (64 << 10) + 32 * map.length, `${bytes} bytes on disk`);
  });
});
