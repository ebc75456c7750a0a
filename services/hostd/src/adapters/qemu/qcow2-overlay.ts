import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { ValidationError } from '@forky/base';

/**
 * An empty qcow2 v3 overlay on a qcow2 backing file, byte for byte what QEMU 7.2's
 * `qemu-img create -q -u -f qcow2 -b NAME -F qcow2 FILE SIZE` writes, made without a process:
 * a fork makes one per child, and a qemu-img spawn costs more than the rest of the layer.
 *
 * Layout (64 KiB clusters): 0 header, 1 refcount table, 2 refcount block, 3… L1 table (zeros).
 */
const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;
/** One L2 table (8192 entries of 8 bytes) maps 512 MiB: what one L1 entry covers. */
const L1_ENTRY_SPAN = (CLUSTER / 8) * CLUSTER;
/** Where the header extensions end and the backing name starts (fixed in 7.2: the feature table is constant). */
const BACKING_OFFSET = 0x210;
/** QEMU refuses longer backing names (header field limit, 1023 bytes). */
export const MAX_BACKING_NAME = 1023;
/**
 * The largest virtual size made here (64 TiB: an L1 table of 16 clusters), the largest checked
 * against qemu-img; a larger one is made by qemu-img (`overlayHeader` returns undefined).
 */
export const MAX_NATIVE_SIZE = 64 * 2 ** 40;

/** QEMU's feature name table (header extension 0x6803f857): type, bit, name. */
const FEATURES: ReadonlyArray<readonly [number, number, string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];

/** The validated input: a bare, printable file name and a byte count. */
function check(backing: string, virtualSize: number): Buffer {
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0)
    throw new ValidationError(`virtual size must be a whole number of bytes ≥ 0, got ${virtualSize}`, { field: 'virtualSize' });
  const name = Buffer.from(backing, 'utf8');
  // Bare: the chain resolves names relative to the overlay's directory.
  if (name.length === 0 || name.length > MAX_BACKING_NAME || backing.includes('/') || [...backing].some((c) => c.charCodeAt(0) < 0x20))
    throw new ValidationError(`backing must be a bare file name of 1–${MAX_BACKING_NAME} bytes, got ${JSON.stringify(backing)}`, {
      field: 'backing',
    });
  return name;
}

/**
 * The whole file (header, refcounts, zeroed L1) for an overlay of `virtualSize` bytes (rounded up to
 * 512, as qemu-img does) on `backing`; undefined above MAX_NATIVE_SIZE. Throws ValidationError
 * (field `backing` or `virtualSize`) on bad input.
 */
export function overlayBytes(backing: string, virtualSize: number): Buffer | undefined {
  const name = check(backing, virtualSize);
  if (virtualSize > MAX_NATIVE_SIZE) return undefined;
  const size = Math.ceil(virtualSize / 512) * 512;
  const l1Entries = Math.ceil(size / L1_ENTRY_SPAN);
  const l1Clusters = Math.ceil((l1Entries * 8) / CLUSTER);
  const l1Offset = 3 * CLUSTER;
  const buf = Buffer.alloc(l1Offset + l1Entries * 8);
  // Header (qcow2 v3, 112 bytes).
  buf.writeUInt32BE(0x514649fb, 0); // QFI\xfb
  buf.writeUInt32BE(3, 4);
  buf.writeBigUInt64BE(BigInt(BACKING_OFFSET), 8);
  buf.writeUInt32BE(name.length, 16);
  buf.writeUInt32BE(CLUSTER_BITS, 20);
  buf.writeBigUInt64BE(BigInt(size), 24);
  // crypt_method 0 at 32
  buf.writeUInt32BE(l1Entries, 36);
  // qemu-img points at the L1 table only once it has one entry (the cluster is counted either way).
  if (l1Entries > 0) buf.writeBigUInt64BE(BigInt(l1Offset), 40);
  buf.writeBigUInt64BE(BigInt(CLUSTER), 48); // refcount table
  buf.writeUInt32BE(1, 56); // its clusters
  // no snapshots (60, 64); no incompatible, compatible or autoclear features (72, 80, 88)
  buf.writeUInt32BE(4, 96); // refcount order: 16-bit refcounts
  buf.writeUInt32BE(0x70, 100); // header length; compression type zlib (0) at 104
  // Extensions: the backing format, the feature name table, the end.
  let p = 0x70;
  buf.writeUInt32BE(0xe2792aca, p);
  buf.writeUInt32BE(5, p + 4);
  buf.write('qcow2', p + 8, 'latin1');
  p += 16;
  buf.writeUInt32BE(0x6803f857, p);
  buf.writeUInt32BE(FEATURES.length * 48, p + 4);
  p += 8;
  for (const [type, bit, label] of FEATURES) {
    buf.writeUInt8(type, p);
    buf.writeUInt8(bit, p + 1);
    buf.write(label, p + 2, 'latin1');
    p += 48;
  }
  p += 8; // end-of-extensions marker (zeros)
  if (p !== BACKING_OFFSET) throw new Error(`qcow2 header layout: extensions end at ${p}`);
  name.copy(buf, BACKING_OFFSET);
  // The refcount table's one entry: the block in cluster 2, which counts every cluster in use once.
  buf.writeBigUInt64BE(BigInt(2 * CLUSTER), CLUSTER);
  for (let c = 0; c < 3 + l1Clusters; c++) buf.writeUInt16BE(1, 2 * CLUSTER + 2 * c);
  return buf;
}

/**
 * Writes an empty overlay, with qemu-img's mode, to a temporary file renamed over `file`: a file
 * there (one a QEMU may have open) is replaced, never truncated in place, and a crash mid-write
 * leaves no torn file under the final name. No fsync: the first flush QEMU makes of the file
 * makes the header durable too, and a host that crashes before that loses the VM using it as well.
 * Returns false, writing nothing, for a size made only by qemu-img.
 */
export async function writeOverlay(file: string, backing: string, virtualSize: number): Promise<boolean> {
  const bytes = overlayBytes(backing, virtualSize);
  if (!bytes) return false;
  // Beside it (a rename stays on its filesystem); `.tmp`, so no listing of layers takes it for one.
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fs.writeFile(tmp, bytes, { mode: 0o644, flag: 'wx' });
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  return true;
}
