import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { HASH_BYTES, PAGE, type ChunkMap } from './chunk-map.js';
import { hashPage } from './chunk-scan.js';

/** The walk goes a window (1 MiB of the file) at a time: one hash update, I/O batched per window. */
const WIN_PAGES = 256;
const WIN = WIN_PAGES * PAGE;
const ZERO = Buffer.alloc(WIN);
/** Zeros are hashed this much at a time (about 11 ms), then the loop breathes: a hole of a TiB must not freeze the host. */
const ZERO_SLICE = 16 << 20;

/** Hashes `n` zero bytes in slices, yielding to the event loop and checking `signal` between them. */
export async function hashZeros(h: Hash, n: number, signal?: AbortSignal): Promise<void> {
  for (let left = n; left > 0;) {
    signal?.throwIfAborted();
    const slice = Math.min(left, ZERO_SLICE);
    for (let k = slice; k > 0; k -= ZERO.length) h.update(ZERO.subarray(0, Math.min(k, ZERO.length)));
    left -= slice;
    if (left > 0) await new Promise<void>((r) => setImmediate(r));
  }
}

/** Writes all `len` bytes or throws: a short write (disk full) must not leave zeros the digest never saw. */
export async function writeAll(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  for (let done = 0; done < len;) {
    const { bytesWritten } = await fh.write(buf, off + done, len - done, pos + done);
    if (bytesWritten <= 0) throw Object.assign(new Error(`short write at ${pos + done}`), { code: 'ENOSPC' });
    done += bytesWritten;
  }
}

export interface Walk {
  map: ChunkMap;
  /** Per entry, the base page its bytes come from, or -1: already written to `out` from a pack. */
  src: Int32Array;
  out: FileHandle;
  base?: FileHandle;
  /** Resolves once entries [i, i+n) from packs are written. */
  until: (i: number, n: number) => Promise<void>;
  signal: AbortSignal;
}

async function readInto(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, off + got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  if (got < len) buf.fill(0, off + got, off + len);
}

interface Run {
  i: number;
  n: number;
  b: number;
  x: number;
}

function runsOf(w: Walk, i0: number, i1: number): Run[] {
  const { map, src } = w;
  const out: Run[] = [];
  for (let i = i0; i < i1;) {
    const x = map.idx[i] as number;
    const b = src[i] as number;
    let n = 1;
    while (i + n < i1 && map.idx[i + n] === x + n && (b < 0 ? src[i + n] === -1 : src[i + n] === b + n)) n++;
    out.push({ i, n, b, x });
    i += n;
  }
  return out;
}

/**
 * Puts window `win`'s content in `buf` (holes as zeros) and starts writing its base pages to
 * `out`; resolves with those writes. Base pages at their own place (a RAM file and its parent)
 * come in one read of the base's window, the rest run by run, all runs at once.
 */
async function load(w: Walk, win: number, i0: number, i1: number, buf: Buffer): Promise<Promise<unknown>[]> {
  w.signal.throwIfAborted();
  const first = win * WIN_PAGES;
  const runs = runsOf(w, i0, i1);
  const based = runs.filter((r) => r.b >= 0);
  const bulk = based.length > 1 && based.every((r) => r.b === r.x);
  if (bulk) await readInto(w.base as FileHandle, buf, 0, WIN, first * PAGE);
  else buf.fill(0);
  const reads: Promise<void>[] = [];
  let next = first;
  for (const r of runs) {
    const o = (r.x - first) * PAGE;
    // The base may have data where this part has a hole.
    if (bulk) buf.fill(0, (next - first) * PAGE, o);
    next = r.x + r.n;
    if (r.b >= 0) {
      if (!bulk) reads.push(readInto(w.base as FileHandle, buf, o, r.n * PAGE, r.b * PAGE));
    } else {
      await w.until(r.i, r.n);
      reads.push(readInto(w.out, buf, o, r.n * PAGE, r.x * PAGE));
    }
  }
  if (bulk) buf.fill(0, (next - first) * PAGE);
  await Promise.all(reads);
  const size = w.map.size;
  return based.map((r) => writeAll(w.out, buf, (r.x - first) * PAGE, Math.min(r.n * PAGE, size - r.x * PAGE), r.x * PAGE));
}

const quiet = <T>(p: Promise<T>): Promise<T> => {
  p.catch(() => undefined);
  return p;
};

/**
 * Walks the part in file order: copies the base's pages into `out`, waits for the pages packs
 * bring, and hashes the whole (holes as zeros; they stay holes). The next window loads while
 * this one is hashed. Resolves with the sha256 of the part's content.
 */
export async function walk(w: Walk): Promise<{ digest: string; pagesOk: boolean }> {
  const { map } = w;
  const n = map.idx.length;
  const h = createHash('sha256');
  const slots = [0, 1, 2].map(() => ({ buf: Buffer.alloc(WIN), busy: Promise.resolve() as Promise<unknown> }));
  let i = 0;
  let s = 0;
  const start = (): { win: number; i0: number; i1: number; slot: (typeof slots)[number]; p: Promise<Promise<unknown>[]> } | undefined => {
    if (i >= n) return undefined;
    const win = Math.floor((map.idx[i] as number) / WIN_PAGES);
    const i0 = i;
    while (i < n && Math.floor((map.idx[i] as number) / WIN_PAGES) === win) i++;
    const i1 = i;
    const slot = slots[s++ % slots.length] as (typeof slots)[number];
    return { win, i0, i1, slot, p: quiet(slot.busy.then(() => load(w, win, i0, i1, slot.buf))) };
  };
  let pos = 0;
  let pagesOk = true;
  for (let cur = start(); cur;) {
    const writes = await cur.p;
    const { win, slot, i0, i1 } = cur;
    cur = start();
    // Pages from packs against the map's hashes: a map is cached and reused only if they held.
    for (let j = i0; j < i1 && pagesOk; j++) {
      if (w.src[j] !== -1) continue;
      const o = ((map.idx[j] as number) - win * WIN_PAGES) * PAGE;
      const page = slot.buf.subarray(o, Math.min(o + PAGE, map.size - win * WIN));
      pagesOk = hashPage(page).compare(map.hash, j * HASH_BYTES, (j + 1) * HASH_BYTES, 0, HASH_BYTES) === 0;
    }
    await hashZeros(h, win * WIN - pos, w.signal);
    const len = Math.min(WIN, map.size - win * WIN);
    h.update(slot.buf.subarray(0, len));
    pos = win * WIN + len;
    slot.busy = quiet(Promise.all(writes));
  }
  await Promise.all(slots.map((x) => x.busy));
  await hashZeros(h, map.size - pos, w.signal);
  return { digest: h.digest('hex'), pagesOk };
}
