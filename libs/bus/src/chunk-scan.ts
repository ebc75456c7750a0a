import { createHash, hash as oneShot } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { HASH_BYTES, MAX_MAP_BYTES, MAX_PACKS, PAGE, byHash, mapBytes, type ChunkMap } from './chunk-map.js';
import { Bytes, HashIndex } from './chunk-index.js';

/** A growable Uint32Array: entries are counted in millions for large parts, JS arrays would be 4× the size. */
export class U32 {
  a = new Uint32Array(1024);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Uint32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  view(): Uint32Array {
    return this.a.subarray(0, this.n);
  }
}

const ZERO_PAGE = Buffer.alloc(PAGE);
const WINDOW = 1 << 20;

/** Reads up to `len` bytes at `pos`; past the end reads as zeros. */
export async function readFull(fh: FileHandle, buf: Buffer, len: number, pos: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  buf.fill(0, got, len);
  return got;
}

/** sha256 of a page padded to PAGE with zeros (the last page of a file may be short). */
export function hashPage(piece: Buffer): Buffer {
  if (piece.length === PAGE) return oneShot('sha256', piece, 'buffer');
  return createHash('sha256').update(piece).update(ZERO_PAGE.subarray(piece.length)).digest();
}

/** What a scan found: a map whose pack 0 is the new pack (`fresh` lists its pages in order). */
export interface Scan {
  digest: string;
  size: number;
  map: ChunkMap;
  /** Page indices of the file whose bytes make the new pack, in pack order. */
  fresh: Uint32Array;
  /** sha256 over the full sha256 of each fresh page: the new pack's content address. */
  packDigest: string;
}

/** Scanning gave up: the map would be too large or name too many packs; the part is sent sparse-encoded. */
export class TooLargeForMap extends Error {}

/**
 * One pass over `fh`: the whole file's sha256 (unless known), and an entry per non-zero page.
 * With a base (its store map and an open handle), a page equal to the base's page at the same
 * place, or whose hash the base has anywhere, reuses the base's entry; the others go into a new
 * pack, each distinct page once.
 */
export async function scanFile(fh: FileHandle, opts: { base?: { fh: FileHandle; map: ChunkMap }; digest?: string }): Promise<Scan> {
  const size = (await fh.stat()).size;
  const whole = opts.digest ? undefined : createHash('sha256');
  const base = opts.base;
  // Two windows: the next is read (file and base) while this one is hashed.
  const bufs = [Buffer.alloc(WINDOW), Buffer.alloc(WINDOW)] as const;
  const bbufs = base ? ([Buffer.alloc(WINDOW), Buffer.alloc(WINDOW)] as const) : undefined;
  const read = (pos: number, k: 0 | 1): Promise<number> => {
    const len = Math.min(WINDOW, size - pos);
    const p = Promise.all([readFull(fh, bufs[k], len, pos), bbufs ? readFull(base!.fh, bbufs[k], len, pos) : 0]).then(([n]) => n);
    p.catch(() => undefined);
    return p;
  };
  const idx = new U32();
  const off = new U32();
  const pack = new U32();
  const hashes = new Bytes();
  const fresh = new U32();
  const freshHashes = new Bytes();
  const freshAt = new HashIndex(() => freshHashes.buf);
  const packHash = createHash('sha256');
  // Pack 0 is the new one; base packs get indices as they are first used.
  const refs: string[] = [''];
  const refOf = new Map<number, number>();
  let baseHashes: HashIndex | undefined;
  let c = 0;
  const entry = (i: number, h: Buffer, p: number, o: number): void => {
    idx.push(i);
    hashes.push(h, 0, HASH_BYTES);
    pack.push(p);
    off.push(o);
  };
  const reuse = (i: number, j: number, h: Buffer): void => {
    const m = base!.map;
    const bp = m.pack[j] as number;
    let r = refOf.get(bp);
    if (r === undefined) {
      if (refs.length >= MAX_PACKS) throw new TooLargeForMap('too many packs');
      r = refs.push(m.packs[bp] as string) - 1;
      refOf.set(bp, r);
    }
    entry(i, h, r, m.off[j] as number);
  };
  let next = size > 0 ? read(0, 0) : undefined;
  for (let pos = 0, k: 0 | 1 = 0; pos < size; pos += WINDOW, k = k ? 0 : 1) {
    const n = await (next as Promise<number>);
    next = pos + WINDOW < size ? read(pos + WINDOW, k ? 0 : 1) : undefined;
    const buf = bufs[k];
    const bbuf = bbufs?.[k];
    whole?.update(buf.subarray(0, n));
    for (let o = 0; o < n; o += PAGE) {
      const piece = buf.subarray(o, Math.min(o + PAGE, n));
      if (piece.equals(ZERO_PAGE.subarray(0, piece.length))) continue;
      const i = (pos + o) / PAGE;
      if (base) {
        const m = base.map;
        while (c < m.idx.length && (m.idx[c] as number) < i) c++;
        // Same place, same bytes: the base's entry is this page (no hash needed).
        if (m.idx[c] === i && piece.length === PAGE && piece.equals(bbuf!.subarray(o, o + PAGE))) {
          reuse(i, c, m.hash.subarray(c * HASH_BYTES, (c + 1) * HASH_BYTES));
          continue;
        }
      }
      const h = hashPage(piece);
      const j = base ? (baseHashes ??= byHash(base.map)).get(h, 0) : -1;
      if (j >= 0) {
        reuse(i, j, h.subarray(0, HASH_BYTES));
        continue;
      }
      let at = freshAt.get(h, 0);
      if (at < 0) {
        at = fresh.n;
        fresh.push(i);
        freshHashes.push(h, 0, HASH_BYTES);
        freshAt.add(at);
        packHash.update(h);
      }
      entry(i, h.subarray(0, HASH_BYTES), 0, at);
    }
    if (mapBytes(refs.length, idx.n) > MAX_MAP_BYTES) throw new TooLargeForMap('map too large');
  }
  const map: ChunkMap = {
    size,
    packs: refs,
    idx: idx.view(),
    off: off.view(),
    pack: new Uint16Array(pack.view()),
    hash: Buffer.from(hashes.view()),
    depth: 0,
  };
  const packDigest = packHash.digest('hex');
  if (fresh.n) map.packs[0] = packDigest;
  else {
    // No new pack: drop index 0.
    map.packs.shift();
    for (let k = 0; k < map.pack.length; k++) map.pack[k] = (map.pack[k] as number) - 1;
  }
  return { digest: opts.digest ?? whole!.digest('hex'), size, map, fresh: fresh.view(), packDigest };
}
