import { crc32 } from './crc32.js';

/** Largest payload a frame may carry (PROTOCOL.md, Frames). */
export const MAX_PAYLOAD = 65536;
export const HEADER_BYTES = 16;
/** The zeros the host writes before its HELLO: they complete any partial frame left in the agent's input. */
export const HELLO_PREFIX_BYTES = MAX_PAYLOAD + HEADER_BYTES;
const MAGIC0 = 0x46;
const MAGIC1 = 0x4b;

export const FrameType = {
  HELLO: 0x01,
  HELLO_ACK: 0x02,
  PING: 0x03,
  PONG: 0x04,
  OPEN: 0x10,
  OPENED: 0x11,
  DATA: 0x12,
  EOF: 0x13,
  CREDIT: 0x14,
  MSG: 0x15,
  END: 0x16,
  CANCEL: 0x17,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

export interface Frame {
  type: number;
  stream: number;
  payload: Buffer;
}

export function encodeFrame(type: number, stream: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  out[0] = MAGIC0;
  out[1] = MAGIC1;
  out[2] = type;
  out[3] = 0;
  out.writeUInt32BE(stream >>> 0, 4);
  out.writeUInt32BE(payload.length, 8);
  out.set(payload, HEADER_BYTES);
  out.writeUInt32BE(crc32(out.subarray(HEADER_BYTES), crc32(out.subarray(0, 12))), 12);
  return out;
}

export function encodeJsonFrame(type: number, stream: number, value: unknown): Buffer {
  return encodeFrame(type, stream, Buffer.from(JSON.stringify(value)));
}

/**
 * Takes the byte stream in chunks and hands out frames one at a time (pull, so a caller can stop
 * mid-chunk for back-pressure). Resynchronises per PROTOCOL.md: on a bad header or CRC it drops
 * one byte and looks for the next magic. It holds at most one incomplete frame beyond the chunks
 * pushed and not yet pulled. Chunks are appended to a buffer that grows by doubling, so a frame
 * fed in tiny chunks costs linear time, not a copy of all held bytes per chunk.
 */
export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  #off = 0;
  #end = 0;
  /** Bytes dropped while resynchronising. */
  garbageBytes = 0;
  /** Frames whose header looked right but whose CRC did not match. */
  badCrcFrames = 0;

  push(chunk: Uint8Array): void {
    const held = this.#end - this.#off;
    if (this.#end + chunk.length > this.#buf.length) {
      // Grow (or, when most of it was consumed, compact): each byte is moved O(1) times on average.
      const need = held + chunk.length;
      const size = need * 2 <= this.#buf.length ? this.#buf.length : Math.max(need * 2, 4096);
      const next = size === this.#buf.length ? this.#buf : Buffer.allocUnsafe(size);
      this.#buf.copy(next, 0, this.#off, this.#end);
      this.#buf = next;
      this.#off = 0;
      this.#end = held;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** Bytes held and not yet returned as frames or dropped. */
  get buffered(): number {
    return this.#end - this.#off;
  }

  /** The next complete good frame, or undefined until more bytes are pushed. */
  next(): Frame | undefined {
    const buf = this.#buf;
    for (;;) {
      const avail = this.#end - this.#off;
      if (avail === 0) {
        // All consumed: a buffer grown by a burst is let go of.
        if (buf.length > 4 * (HEADER_BYTES + MAX_PAYLOAD)) this.#buf = Buffer.alloc(0);
        this.#off = this.#end = 0;
        return undefined;
      }
      if (buf[this.#off] !== MAGIC0 || (avail >= 2 && buf[this.#off + 1] !== MAGIC1)) {
        const at = buf.subarray(0, this.#end).indexOf(MAGIC0, this.#off + 1);
        this.#drop((at === -1 ? this.#end : at) - this.#off);
        continue;
      }
      // Reject a bad header as soon as the bytes that show it are here, not only once 16 arrived.
      if (avail >= 4 && buf[this.#off + 3] !== 0) {
        this.#drop(1);
        continue;
      }
      if (avail < 12) return undefined;
      const length = buf.readUInt32BE(this.#off + 8);
      if (length > MAX_PAYLOAD) {
        this.#drop(1);
        continue;
      }
      if (avail < HEADER_BYTES + length) return undefined;
      const start = this.#off;
      const payload = buf.subarray(start + HEADER_BYTES, start + HEADER_BYTES + length);
      if (crc32(payload, crc32(buf.subarray(start, start + 12))) !== buf.readUInt32BE(start + 12)) {
        this.badCrcFrames++;
        this.#drop(1);
        continue;
      }
      this.#off += HEADER_BYTES + length;
      // A copy: the buffer is reused for what comes next.
      return { type: buf[start + 2] as number, stream: buf.readUInt32BE(start + 4), payload: Buffer.from(payload) };
    }
  }

  #drop(n: number): void {
    this.garbageBytes += n;
    this.#off += n;
  }
}
