import type { FileHandle } from 'node:fs/promises';
import { mapSettled } from '@forky/base';
import { CorruptPartError, HASH_BYTES, PAGE, byHash, type ChunkMap } from './chunk-map.js';
import { walk, writeAll } from './chunk-walk.js';
import type { HashIndex } from './chunk-index.js';

/** Pages moved in one read or write at most (1 MiB). */
const RUN = 256;
/** Entry indices fit in 22 bits (a map is at most 64 MiB, 26 bytes an entry): key = off·2²² + entry. */
const ENTRY_BITS = 2 ** 22;
const MAX_OFF = 2 ** 30;
export interface Assembly {
  map: ChunkMap;
  /** The part's digest, for errors. */
  what: string;
  out: FileHandle;
  /** A local file with its content map: pages it has are copied from it, not fetched. */
  base?: { fh: FileHandle; map: ChunkMap };
  /** Sizes of the packs the map names, as the store has them. */
  packSize: (pack: string) => number;
  /** Streams a pack's chunks to `onChunk` until it returns false; resolves with the chunks seen. */
  readPack: (pack: string, onChunk: (data: Uint8Array) => Promise<boolean>) => Promise<number>;
  signal: AbortSignal;
  parallel: number;
}

/** Where each entry's bytes come from: a base page index, or -1 for its pack. */
function fromBase(map: ChunkMap, base: ChunkMap | undefined): Int32Array {
  const src = new Int32Array(map.idx.length).fill(-1);
  if (!base) return src;
  let c = 0;
  let hashes: HashIndex | undefined;
  for (let i = 0; i < map.idx.length; i++) {
    const x = map.idx[i] as number;
    while (c < base.idx.length && (base.idx[c] as number) < x) c++;
    const h = i * HASH_BYTES;
    if (base.idx[c] === x && base.hash.compare(map.hash, h, h + HASH_BYTES, c * HASH_BYTES, (c + 1) * HASH_BYTES) === 0) {
      src[i] = x;
      continue;
    }
    const j = (hashes ??= byHash(base)).get(map.hash, h);
    if (j >= 0) src[i] = base.idx[j] as number;
  }
  return src;
}

/** Per pack, the entries it must supply, sorted by offset; offsets past a pack are refused here. */
function plan(a: Assembly, src: Int32Array): Float64Array[] {
  const { map } = a;
  if (map.idx.length >= ENTRY_BITS)
    throw new CorruptPartError(`part ${a.what}: its chunk map has ${map.idx.length} entries, more than ${ENTRY_BITS - 1}`, {
      field: 'entries',
    });
  const counts = new Uint32Array(map.packs.length);
  for (let i = 0; i < src.length; i++) if (src[i] === -1) counts[map.pack[i] as number]!++;
  const keys = [...counts].map((c) => new Float64Array(c));
  const fill = new Uint32Array(map.packs.length);
  const sizes = map.packs.map((p) => a.packSize(p));
  for (let i = 0; i < src.length; i++) {
    if (src[i] !== -1) continue;
    const p = map.pack[i] as number;
    const off = map.off[i] as number;
    if (off >= MAX_OFF || (off + 1) * PAGE > (sizes[p] as number))
      throw new CorruptPartError(
        `part ${a.what}: its chunk map puts page ${map.idx[i]} at offset ${off} of pack ${map.packs[p]}, past its end`,
        {
          field: 'off',
        },
      );
    keys[p]![fill[p]!++] = off * ENTRY_BITS + i;
  }
  for (const k of keys) k.sort();
  return keys;
}

/** Writes the pages one pack supplies as its chunks arrive; runs of adjacent pages in one write. */
async function fromPack(a: Assembly, p: number, keys: Float64Array, wrote: (entries: Float64Array) => void): Promise<number> {
  const { map, out } = a;
  const pack = map.packs[p] as string;
  let k = 0;
  let start = 0;
  let carry = Buffer.alloc(0);
  let received = 0;
  await a.readPack(pack, async (data) => {
    received += data.length;
    const chunk = carry.length ? Buffer.concat([carry, data]) : Buffer.from(data.buffer, data.byteOffset, data.length);
    const end = start + chunk.length;
    const first = k;
    const writes: Promise<unknown>[] = [];
    while (k < keys.length) {
      const key = keys[k] as number;
      const off = Math.floor(key / ENTRY_BITS);
      if ((off + 1) * PAGE > end) break;
      const i = key % ENTRY_BITS;
      let n = 1;
      for (; n < RUN && k + n < keys.length; n++) {
        const next = keys[k + n] as number;
        const o2 = Math.floor(next / ENTRY_BITS);
        if (o2 !== off + n || map.idx[next % ENTRY_BITS] !== (map.idx[i] as number) + n || (o2 + 1) * PAGE > end) break;
      }
      writes.push(writeAll(out, chunk, off * PAGE - start, n * PAGE, (map.idx[i] as number) * PAGE));
      k += n;
    }
    // A chunk's runs are written all at once (a RAM part's pages are scattered: many small writes).
    a.signal.throwIfAborted();
    await Promise.all(writes);
    if (k > first) wrote(keys.subarray(first, k));
    const keep = Math.floor(end / PAGE) * PAGE;
    carry = Buffer.from(chunk.subarray(keep - start));
    start = keep;
    return k < keys.length;
  });
  if (k < keys.length)
    throw new CorruptPartError(
      `part ${a.what}: pack ${pack} ended before the page at offset ${Math.floor((keys[k] as number) / ENTRY_BITS)}`,
      {
        field: 'pack',
      },
    );
  return received;
}

/** Entries written so far by the pack fetches; the digest walk waits here for the ones it reaches. */
class Landed {
  readonly done: Uint8Array;
  #wake: (() => void) | undefined;
  #failed: { e: unknown } | undefined;
  constructor(n: number) {
    this.done = new Uint8Array(n);
  }
  mark(keys: Float64Array): void {
    for (const key of keys) this.done[key % ENTRY_BITS] = 1;
    this.#ping();
  }
  fail(e: unknown): void {
    this.#failed = { e };
    this.#ping();
  }
  #ping(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
  async until(i: number, n: number): Promise<void> {
    for (;;) {
      if (this.#failed) throw this.#failed.e;
      let all = true;
      for (let j = i; j < i + n && all; j++) all = this.done[j] === 1;
      if (all) return;
      await new Promise<void>((r) => (this.#wake = r));
    }
  }
}

const quiet = <T>(p: Promise<T>): Promise<T> => {
  p.catch(() => undefined);
  return p;
};

/**
 * Builds the part at `out` and its digest. Packs are fetched in parallel (bounded) while one walk
 * in file order (chunk-walk.ts) copies pages from the base, waits for the pages packs bring, and
 * hashes the whole.
 */
export async function assemble(a: Assembly): Promise<{ digest: string; pagesOk: boolean; receivedBytes: number }> {
  const { map, out } = a;
  const src = fromBase(map, a.base?.map);
  const keys = plan(a, src);
  await out.truncate(map.size);
  const landed = new Landed(src.length);
  const fetching = quiet(
    mapSettled(
      keys.map((k, p) => ({ k, p })).filter((x) => x.k.length > 0),
      a.parallel,
      // The first pack that fails stops the walk at once, not after every other pack settled.
      (x) =>
        fromPack(a, x.p, x.k, (e) => landed.mark(e)).catch((e: unknown) => {
          landed.fail(e);
          throw e;
        }),
    ).then((got) => {
      let received = 0;
      for (const g of got) {
        if (g.status === 'rejected') throw g.reason;
        received += g.value;
      }
      return received;
    }),
  );
  const { digest, pagesOk } = await walk({
    map,
    src,
    out,
    ...(a.base ? { base: a.base.fh } : {}),
    until: (i, n) => landed.until(i, n),
    signal: a.signal,
  });
  const receivedBytes = await fetching;
  await out.truncate(map.size);
  return { digest, pagesOk, receivedBytes };
}
