import { ForkyError, type ErrorDetails } from '@forky/base';
import { HashIndex } from './chunk-index.js';

/*
 * A part's object is a chunk map: the file's size and, for each non-zero 4 KiB page, its hash
 * and where its bytes are (pack, page offset in the pack). Holes and zero pages have no entry.
 * Binary, struct of arrays, so decoding is a few copies and one validation loop:
 *   "FKCM1\n\0\0" size:u64 page:u32 packs:u32 entries:u32 flags:u8 depth:u8 0:u16   (32 bytes, LE)
 *   [delta: base part sha256 (32), base object nuid (24, NUL-padded)]
 *   packs × 32 (sha256 of each pack), idx:u32 × n, off:u32 × n, pack:u16 × n (+2 if n is odd),
 *   hash × 16 × n (sha256 of the page padded with zeros, truncated: the whole file is verified anyway).
 * A delta map (a re-snapshot's) lists only the entries that differ from its base part's map, that
 * exact object, and `depth` deltas deep; pack TOMBSTONE marks a page the base has and it lacks.
 */
export const MAP_MAGIC = Buffer.from('FKCM1\n\0\0');
export const PAGE = 4096;
export const HASH_BYTES = 16;
/** A map names at most this many packs (u16 indices; the last is TOMBSTONE). */
export const MAX_PACKS = 0xfffe;
export const TOMBSTONE = 0xffff;
/** Deltas on deltas at most this deep: a reader resolves them one base at a time. */
export const MAX_DEPTH = 4;
/** Larger parts than this are refused (a lying size must not size an allocation). */
export const MAX_PART_BYTES = 2 ** 40;
/** A map larger than this is not read (about 10 GiB of non-zero pages); such parts upload sparse-encoded. */
export const MAX_MAP_BYTES = 64 << 20;

export interface ChunkMap {
  size: number;
  /** sha256 hex of each pack, named `pack-<hex>`. */
  packs: string[];
  /** Page index of each entry, strictly increasing. */
  idx: Uint32Array;
  /** Page offset of each entry in its pack. */
  off: Uint32Array;
  pack: Uint16Array;
  /** HASH_BYTES per entry. */
  hash: Buffer;
  /** A delta's base: the part and the very object its entries were taken against. */
  base?: { digest: string; nuid: string };
  /** How many deltas deep the stored object is (0: a whole map). */
  depth: number;
}

/** A part whose map, packs or bytes do not hold together; nothing is left at its destination. */
export class CorruptPartError extends ForkyError {
  override readonly name = 'CorruptPartError';
  constructor(message: string, details?: ErrorDetails) {
    super('INTERNAL', message, { details });
  }
}

export const pagesOf = (size: number): number => Math.ceil(size / PAGE);
const HEAD = 32;
const BASE = 56;
const pad2 = (n: number): number => (n % 2 ? 2 : 0);

export function mapBytes(packs: number, n: number, delta = false): number {
  return HEAD + (delta ? BASE : 0) + 32 * packs + 10 * n + pad2(n) + HASH_BYTES * n;
}

export function encodeMap(m: ChunkMap): Buffer {
  const n = m.idx.length;
  const out = Buffer.alloc(mapBytes(m.packs.length, n, !!m.base));
  MAP_MAGIC.copy(out);
  out.writeBigUInt64LE(BigInt(m.size), 8);
  out.writeUInt32LE(PAGE, 16);
  out.writeUInt32LE(m.packs.length, 20);
  out.writeUInt32LE(n, 24);
  out.writeUInt8(m.base ? 1 : 0, 28);
  out.writeUInt8(m.depth, 29);
  let p = HEAD;
  if (m.base) {
    Buffer.from(m.base.digest, 'hex').copy(out, p);
    out.write(m.base.nuid.slice(0, 24), p + 32, 'latin1');
    p += BASE;
  }
  for (const k of m.packs) p += Buffer.from(k, 'hex').copy(out, p);
  const put = (a: Uint32Array | Uint16Array): void => {
    p += Buffer.from(a.buffer, a.byteOffset, a.byteLength).copy(out, p);
  };
  put(m.idx);
  put(m.off);
  put(m.pack);
  p += pad2(n);
  m.hash.copy(out, p, 0, HASH_BYTES * n);
  return out;
}

export const isMap = (head: Uint8Array): boolean =>
  head.length >= MAP_MAGIC.length && Buffer.from(head.buffer, head.byteOffset, MAP_MAGIC.length).equals(MAP_MAGIC);

/** Decodes and checks a map against itself; `what` names the part in errors. Pack offsets are checked by the reader. */
export function decodeMap(b: Buffer, what: string): ChunkMap {
  const bad = (field: string, why: string): never => {
    throw new CorruptPartError(`part ${what}: its chunk map ${why}`, { field });
  };
  if (b.length < HEAD || !isMap(b)) bad('magic', 'is not a chunk map');
  const size = Number(b.readBigUInt64LE(8));
  if (size > MAX_PART_BYTES) bad('size', `declares ${size} bytes, more than ${MAX_PART_BYTES}`);
  if (b.readUInt32LE(16) !== PAGE) bad('page', `has page size ${b.readUInt32LE(16)}, not ${PAGE}`);
  const np = b.readUInt32LE(20);
  const n = b.readUInt32LE(24);
  const flags = b.readUInt8(28);
  const depth = b.readUInt8(29);
  const delta = flags === 1;
  // A whole map may carry a depth (a resolved delta in a host's cache); a delta is never at depth 0.
  if (flags > 1 || depth > MAX_DEPTH || (delta && depth === 0)) bad('flags', `has flags ${flags} at depth ${depth}`);
  if (n > pagesOf(size)) bad('entries', `has ${n} entries for ${pagesOf(size)} pages`);
  if (np > MAX_PACKS || np > n) bad('packs', `names ${np} packs for ${n} entries`);
  if (b.length !== mapBytes(np, n, delta)) bad('length', `is ${b.length} bytes, its counts make ${mapBytes(np, n, delta)}`);
  let p = HEAD;
  let base: ChunkMap['base'];
  if (delta) {
    base = { digest: b.toString('hex', p, p + 32), nuid: b.toString('latin1', p + 32, p + BASE).replace(/\0+$/, '') };
    p += BASE;
  }
  const packs: string[] = [];
  for (let i = 0; i < np; i++, p += 32) packs.push(b.toString('hex', p, p + 32));
  // Copies into fresh (aligned) buffers: the typed arrays must not alias the input.
  const take = (bytes: number): ArrayBuffer => {
    const ab = new ArrayBuffer(bytes);
    b.copy(new Uint8Array(ab), 0, p, p + bytes);
    p += bytes;
    return ab;
  };
  const idx = new Uint32Array(take(4 * n));
  const off = new Uint32Array(take(4 * n));
  const pack = new Uint16Array(take(2 * n));
  p += pad2(n);
  const hash = Buffer.from(take(HASH_BYTES * n));
  const pages = pagesOf(size);
  let last = -1;
  for (let i = 0; i < n; i++) {
    const x = idx[i] as number;
    if (x <= last || x >= pages) bad('idx', `lists page ${x} after ${last} (of ${pages})`);
    if ((pack[i] as number) >= np && !(delta && pack[i] === TOMBSTONE)) bad('pack', `points entry ${i} at pack ${pack[i]} of ${np}`);
    last = x;
  }
  return { size, packs, idx, off, pack, hash, depth, ...(base ? { base } : {}) };
}

/** Index from page hash to the first entry with it, for lookups by content. */
export function byHash(m: ChunkMap): HashIndex {
  const at = new HashIndex(() => m.hash);
  for (let i = 0; i < m.idx.length; i++) at.add(i);
  return at;
}
