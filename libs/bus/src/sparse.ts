import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { ForkyError } from '@forky/base';
import { hashZeros, writeAll } from './chunk-walk.js';

/*
 * The wire form of a part: only the chunks that are not all zero. Holes and zero pages of a RAM
 * file, and unallocated space of a disk layer, are never sent.
 *   "FKSP1\n" size:u64 chunk:u32, then records offset:u64 length:u32 data, then offset=size length=0.
 * A part's address is the sha256 of its logical (expanded) content, checked on arrival.
 */
const MAGIC = Buffer.from('FKSP1\n');
export const CHUNK = 64 * 1024;

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

/** The sha256 and size of a file's logical content. */
export async function digestFile(file: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, size);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
    return { digest: h.digest('hex'), size };
  } finally {
    await fh.close();
  }
}

/** Encodes a file as a stream of sparse records; `sent` counts the bytes that go on the wire. */
export async function* encodeSparse(file: string, stats: { sent: number }): AsyncGenerator<Uint8Array> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(MAGIC.length + 12);
    MAGIC.copy(head);
    head.writeBigUInt64BE(BigInt(size), MAGIC.length);
    head.writeUInt32BE(CHUNK, MAGIC.length + 8);
    stats.sent += head.length;
    yield head;
    const buf = Buffer.alloc(CHUNK * 16);
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      for (let o = 0; o < bytesRead; o += CHUNK) {
        const piece = buf.subarray(o, Math.min(o + CHUNK, bytesRead));
        if (piece.length % 8 === 0 && isZero(piece)) continue;
        const rec = Buffer.alloc(12 + piece.length);
        rec.writeBigUInt64BE(BigInt(pos + o), 0);
        rec.writeUInt32BE(piece.length, 8);
        piece.copy(rec, 12);
        stats.sent += rec.length;
        yield rec;
      }
      pos += bytesRead;
    }
    const end = Buffer.alloc(12);
    end.writeBigUInt64BE(BigInt(size), 0);
    stats.sent += end.length;
    yield end;
  } finally {
    await fh.close();
  }
}

/**
 * Rebuilds a file from sparse records fed in order, hashing as it goes (gaps hash as zeros), so
 * the digest is known when the last record lands without reading the file again.
 */
export class SparseWriter {
  #buf = Buffer.alloc(0);
  #size = -1;
  #pos = 0;
  #hash = createHash('sha256');
  #done = false;
  received = 0;

  constructor(
    private readonly fh: fs.FileHandle,
    /** The size the caller expects (its manifest's); a header declaring another is refused. */
    private readonly expect?: number,
    private readonly signal?: AbortSignal,
  ) {}

  get done(): boolean {
    return this.#done;
  }

  async push(chunk: Uint8Array): Promise<void> {
    this.received += chunk.length;
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : Buffer.from(chunk);
    if (this.#size < 0) {
      if (this.#buf.length < MAGIC.length + 12) return;
      if (!this.#buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new ForkyError('INTERNAL', 'part is not in the sparse format');
      this.#size = Number(this.#buf.readBigUInt64BE(MAGIC.length));
      if (this.expect !== undefined && this.#size !== this.expect)
        throw new ForkyError('INTERNAL', `part declares ${this.#size} bytes, its manifest ${this.expect}`, { details: { field: 'size' } });
      this.#buf = this.#buf.subarray(MAGIC.length + 12);
    }
    while (!this.#done && this.#buf.length >= 12) {
      const off = Number(this.#buf.readBigUInt64BE(0));
      const len = this.#buf.readUInt32BE(8);
      if (this.#buf.length < 12 + len) return;
      if (off < this.#pos || off + len > this.#size) throw new ForkyError('INTERNAL', `part record out of order or bounds at ${off}`);
      await hashZeros(this.#hash, off - this.#pos, this.signal);
      if (len === 0) {
        await this.fh.truncate(this.#size);
        this.#pos = this.#size;
        this.#done = true;
      } else {
        const data = this.#buf.subarray(12, 12 + len);
        await writeAll(this.fh, data, 0, len, off);
        this.#hash.update(data);
        this.#pos = off + len;
      }
      this.#buf = this.#buf.subarray(12 + len);
    }
  }

  /** The sha256 of the rebuilt content; only once the end record has arrived. */
  digest(): string {
    if (!this.#done) throw new ForkyError('INTERNAL', 'part ended before its end record');
    return this.#hash.digest('hex');
  }
}
