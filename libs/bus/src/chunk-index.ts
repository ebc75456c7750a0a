import { HASH_BYTES } from './chunk-map.js';

/** A growable byte array: a page's hash is 16 bytes here, not a Buffer of its own (about 100 B each). */
export class Bytes {
  buf = Buffer.alloc(64 << 10);
  n = 0;
  push(src: Uint8Array, off: number, len: number): void {
    if (this.n + len > this.buf.length) {
      const b = Buffer.alloc(Math.max(this.buf.length * 2, this.n + len));
      this.buf.copy(b, 0, 0, this.n);
      this.buf = b;
    }
    this.buf.set(src.subarray(off, off + len), this.n);
    this.n += len;
  }
  view(): Buffer {
    return this.buf.subarray(0, this.n);
  }
}

/**
 * Page hashes to the first key number with that hash: open addressing in an Int32Array on the
 * hash's first 8 bytes, keys compared whole in `keys()` (key j at j·16). About 8 bytes a key,
 * where a Map with string keys takes over 100.
 */
export class HashIndex {
  #slots = new Int32Array(1024).fill(-1);
  #n = 0;
  constructor(private readonly keys: () => Buffer) {}

  #home(b: Buffer, off: number, mask: number): number {
    return (b.readUInt32LE(off) ^ Math.imul(b.readUInt32LE(off + 4), 0x9e3779b1)) & mask;
  }

  /** The first key equal to `b[off, off+16)`, or -1. */
  get(b: Buffer, off: number): number {
    const keys = this.keys();
    const mask = this.#slots.length - 1;
    for (let s = this.#home(b, off, mask); ; s = (s + 1) & mask) {
      const j = this.#slots[s] as number;
      if (j < 0) return -1;
      if (keys.compare(b, off, off + HASH_BYTES, j * HASH_BYTES, (j + 1) * HASH_BYTES) === 0) return j;
    }
  }

  /** Adds key `j` unless an equal key is there. */
  add(j: number): void {
    if (2 * (this.#n + 1) > this.#slots.length) this.#grow();
    const keys = this.keys();
    if (this.get(keys, j * HASH_BYTES) >= 0) return;
    this.#put(keys, j);
  }

  #put(keys: Buffer, j: number): void {
    const mask = this.#slots.length - 1;
    let s = this.#home(keys, j * HASH_BYTES, mask);
    while ((this.#slots[s] as number) >= 0) s = (s + 1) & mask;
    this.#slots[s] = j;
    this.#n++;
  }

  #grow(): void {
    const old = this.#slots;
    this.#slots = new Int32Array(old.length * 2).fill(-1);
    this.#n = 0;
    const keys = this.keys();
    for (const j of old) if (j >= 0) this.#put(keys, j);
  }
}
