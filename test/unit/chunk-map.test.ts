import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { CorruptPartError } from '@forky/bus';
import { TOMBSTONE, applyDelta, decodeMap, diffMap, encodeMap, type ChunkMap } from '@forky/bus/internal';

/** A whole map of `pages` pages, about half of them present, spread over `packs` packs. */
function randomMap(pages: number, packs: string[]): ChunkMap {
  const idx: number[] = [];
  for (let x = 0; x < pages; x++) if (randomInt(2)) idx.push(x);
  return {
    size: pages * 4096 - randomInt(4096),
    packs,
    idx: Uint32Array.from(idx),
    off: Uint32Array.from(idx.map(() => randomInt(1000))),
    pack: Uint16Array.from(idx.map(() => randomInt(packs.length))),
    hash: randomBytes(16 * idx.length),
    depth: 0,
  };
}

/** Entry by entry, with pack names (indices differ between maps). */
const entries = (m: ChunkMap): string[] =>
  [...m.idx].map((x, i) => `${x}:${m.packs[m.pack[i] as number]}:${m.off[i]}:${m.hash.toString('hex', i * 16, i * 16 + 16)}`);

const pk = (): string => randomBytes(32).toString('hex');

describe('chunk maps: encoding, deltas and what a lying map is refused for', () => {
  it('round-trips a whole map and a delta through the binary form', () => {
    const m = randomMap(3000, [pk(), pk(), pk()]);
    const back = decodeMap(encodeMap(m), 'x');
    assert.deepEqual(entries(back), entries(m));
    assert.equal(back.size, m.size);
    const d = { ...m, base: { digest: pk(), nuid: 'ABCDEFGHIJKLMNOPQRSTUV' }, depth: 2 };
    const db = decodeMap(encodeMap(d), 'x');
    assert.deepEqual(db.base, d.base);
    assert.equal(db.depth, 2);
  });

  it('a delta lists only what changed, and applied to its base gives the whole map back', () => {
    const shared = [pk(), pk()];
    const base = randomMap(5000, shared);
    // The child: the base with some pages changed (a new pack), some gone, some new, a smaller size.
    const fresh = pk();
    const byIdx = new Map(entries(base).map((e) => [Number(e.split(':')[0]), e]));
    for (let k = 0; k < 200; k++) {
      const x = randomInt(4800);
      if (randomInt(3) === 0) byIdx.delete(x);
      else byIdx.set(x, `${x}:${fresh}:${randomInt(500)}:${randomBytes(16).toString('hex')}`);
    }
    const kept = [...byIdx.keys()].filter((x) => x < 4800).sort((a, b) => a - b);
    const packs = [...shared, fresh];
    const child: ChunkMap = {
      size: 4800 * 4096,
      packs,
      idx: Uint32Array.from(kept),
      off: Uint32Array.from(kept.map((x) => Number(byIdx.get(x)?.split(':')[2]))),
      pack: Uint16Array.from(kept.map((x) => packs.indexOf(byIdx.get(x)?.split(':')[1] as string))),
      hash: Buffer.concat(kept.map((x) => Buffer.from(byIdx.get(x)?.split(':')[3] as string, 'hex'))),
      depth: 0,
    };
    const delta = diffMap(child, base, { digest: pk(), nuid: 'N' });
    assert.ok(delta.idx.length <= 200 + 200, `a delta of ${delta.idx.length} entries for 200 changes and a cut tail`);
    assert.ok(
      [...delta.pack].some((p) => p === TOMBSTONE),
      'pages gone are tombstones',
    );
    const whole = applyDelta(decodeMap(encodeMap(delta), 'd'), base);
    assert.deepEqual(entries(whole), entries(child));
  });

  it('refuses maps out of order, pointing past their packs or their pages, or of the wrong length', () => {
    const m = randomMap(100, [pk()]);
    const lies: Array<[string, (b: Buffer) => void]> = [
      ['idx', (b) => b.writeUInt32LE(99, 32 + 32 + 4)],
      ['length', (b) => b.writeUInt32LE(m.idx.length + 1, 24)],
      ['entries', (b) => b.writeUInt32LE(1_000_000, 24)],
      ['flags', (b) => b.writeUInt8(3, 28)],
      ['magic', (b) => b.write('XX', 0)],
    ];
    for (const [field, lie] of lies) {
      const b = encodeMap(m);
      lie(b);
      assert.throws(
        () => decodeMap(b, 'x'),
        (e: unknown) => e instanceof CorruptPartError && ['idx', 'length', 'entries', 'flags', 'magic'].includes(String(e.details?.field)),
        field,
      );
    }
    const bad = { ...m, pack: m.pack.map(() => 5) };
    assert.throws(
      () => decodeMap(encodeMap(bad), 'x'),
      (e: unknown) => e instanceof CorruptPartError && e.details?.field === 'pack',
    );
    const tomb = { ...m, pack: m.pack.map(() => TOMBSTONE) };
    assert.throws(() => decodeMap(encodeMap(tomb), 'x'), /pack/, 'a tombstone only in a delta');
  });
});
