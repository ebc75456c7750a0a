import { CorruptPartError, HASH_BYTES, MAX_PACKS, TOMBSTONE, pagesOf, type ChunkMap } from './chunk-map.js';
import { U32 } from './chunk-scan.js';
import { Bytes } from './chunk-index.js';

/** Builds a map entry by entry, naming each pack once. */
class Builder {
  readonly idx = new U32();
  readonly off = new U32();
  readonly pack = new U32();
  readonly hashes = new Bytes();
  readonly packs: string[] = [];
  readonly #at = new Map<string, number>();

  add(x: number, hash: Buffer, pack: string | undefined, off: number): void {
    let p = TOMBSTONE;
    if (pack !== undefined) {
      let got = this.#at.get(pack);
      if (got === undefined) {
        if (this.packs.length >= MAX_PACKS)
          throw new CorruptPartError(`a chunk map would name more than ${MAX_PACKS} packs`, { field: 'packs' });
        got = this.packs.push(pack) - 1;
        this.#at.set(pack, got);
      }
      p = got;
    }
    this.idx.push(x);
    this.off.push(off);
    this.pack.push(p);
    this.hashes.push(hash, 0, HASH_BYTES);
  }

  done(size: number, depth: number, base?: ChunkMap['base']): ChunkMap {
    return {
      size,
      packs: this.packs,
      idx: this.idx.view(),
      off: this.off.view(),
      pack: new Uint16Array(this.pack.view()),
      hash: Buffer.from(this.hashes.view()),
      depth,
      ...(base ? { base } : {}),
    };
  }
}

const hashOf = (m: ChunkMap, i: number): Buffer => m.hash.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
const ZERO_HASH = Buffer.alloc(HASH_BYTES);

/**
 * The entries of `full` that differ from `base` (a whole map), and a tombstone for each page
 * `base` has that `full` lacks: what a re-snapshot's map stores, `base` being its parent's.
 */
export function diffMap(full: ChunkMap, base: ChunkMap, ref: { digest: string; nuid: string }): ChunkMap {
  const out = new Builder();
  const pages = pagesOf(full.size);
  let j = 0;
  for (let i = 0; i < full.idx.length; i++) {
    const x = full.idx[i] as number;
    for (; j < base.idx.length && (base.idx[j] as number) < x; j++) out.add(base.idx[j] as number, ZERO_HASH, undefined, 0);
    const same =
      base.idx[j] === x &&
      base.off[j] === full.off[i] &&
      base.packs[base.pack[j] as number] === full.packs[full.pack[i] as number] &&
      hashOf(base, j).equals(hashOf(full, i));
    if (base.idx[j] === x) j++;
    if (!same) out.add(x, hashOf(full, i), full.packs[full.pack[i] as number], full.off[i] as number);
  }
  for (; j < base.idx.length && (base.idx[j] as number) < pages; j++) out.add(base.idx[j] as number, ZERO_HASH, undefined, 0);
  return out.done(full.size, base.depth + 1, ref);
}

/** The whole map a delta stands for, given its base's whole map. */
export function applyDelta(delta: ChunkMap, base: ChunkMap): ChunkMap {
  const out = new Builder();
  const pages = pagesOf(delta.size);
  let j = 0;
  const fromBase = (until: number): void => {
    for (; j < base.idx.length && (base.idx[j] as number) < until; j++)
      out.add(base.idx[j] as number, hashOf(base, j), base.packs[base.pack[j] as number], base.off[j] as number);
  };
  for (let i = 0; i < delta.idx.length; i++) {
    const x = delta.idx[i] as number;
    fromBase(x);
    if (base.idx[j] === x) j++;
    if (delta.pack[i] !== TOMBSTONE) out.add(x, hashOf(delta, i), delta.packs[delta.pack[i] as number], delta.off[i] as number);
  }
  fromBase(pages);
  return out.done(delta.size, delta.depth);
}
