import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import {
  crc32,
  encodeFrame,
  FrameReader,
  FrameType,
  HEADER_BYTES,
  HELLO_PREFIX_BYTES,
  MAX_PAYLOAD,
  type Frame,
} from '@forky/agent/internal';

function readAll(reader: FrameReader, ...chunks: Uint8Array[]): Frame[] {
  const out: Frame[] = [];
  for (const c of chunks) {
    reader.push(c);
    for (let f = reader.next(); f; f = reader.next()) out.push(f);
  }
  return out;
}

describe('agent frame codec', () => {
  it('computes the IEEE CRC-32 zlib does', () => {
    assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
    assert.equal(crc32(Buffer.alloc(0)), 0);
    const zcrc = (zlib as unknown as { crc32?: (b: Uint8Array) => number }).crc32;
    for (let i = 0; i < 20; i++) {
      const b = randomBytes(i * 97);
      if (zcrc) assert.equal(crc32(b), zcrc(b));
      // Continuing over two halves equals one pass.
      assert.equal(crc32(b.subarray(i * 40), crc32(b.subarray(0, i * 40))), crc32(b));
    }
  });

  it('encodes the header as PROTOCOL.md lays it out', () => {
    const f = encodeFrame(FrameType.DATA, 0x01020304, Buffer.from([1, 0xaa]));
    assert.deepEqual([...f.subarray(0, 12)], [0x46, 0x4b, 0x12, 0, 1, 2, 3, 4, 0, 0, 0, 2]);
    assert.equal(f.readUInt32BE(12), crc32(Buffer.concat([f.subarray(0, 12), f.subarray(16)])));
    assert.equal(f.length, HEADER_BYTES + 2);
    assert.throws(() => encodeFrame(FrameType.DATA, 1, Buffer.alloc(MAX_PAYLOAD + 1)), RangeError);
  });

  it('round-trips frames of every size, whole or a byte at a time', () => {
    const sent = [0, 1, 15, 16, 17, 1000, MAX_PAYLOAD].map((n, i) => ({ type: FrameType.MSG, stream: i, payload: randomBytes(n) }));
    const wire = Buffer.concat(sent.map((f) => encodeFrame(f.type, f.stream, f.payload)));
    const whole = readAll(new FrameReader(), wire);
    assert.deepEqual(whole, sent);
    const bytewise = new FrameReader();
    const got = readAll(bytewise, ...Array.from(wire, (b) => Buffer.from([b])));
    assert.deepEqual(got, sent);
    assert.equal(bytewise.garbageBytes, 0);
    assert.equal(bytewise.buffered, 0);
  });

  it('finds a good frame inside garbage and counts what it dropped', () => {
    const good = encodeFrame(FrameType.PONG, 0, Buffer.from('hi'));
    const badCrc = Buffer.from(encodeFrame(FrameType.DATA, 3, Buffer.from('xxxx')));
    badCrc[12] = (badCrc[12] as number) ^ 0xff;
    const badFlags = Buffer.from(encodeFrame(FrameType.END, 3, Buffer.from('{}')));
    badFlags[3] = 1;
    const tooLong = Buffer.from(encodeFrame(FrameType.DATA, 3));
    tooLong.writeUInt32BE(MAX_PAYLOAD + 1, 8);
    const noise = Buffer.from('FFKFK\x46\x4b\x99garbage');
    const r = new FrameReader();
    const got = readAll(r, noise, badCrc, good, badFlags, tooLong, noise, good);
    assert.deepEqual(
      got.map((f) => f.payload.toString()),
      ['hi', 'hi'],
    );
    assert.equal(r.badCrcFrames, 1);
    assert.equal(r.garbageBytes, noise.length * 2 + badCrc.length + badFlags.length + tooLong.length);
  });

  it('resynchronises after a partial frame completed by zeros (the fork case)', () => {
    // A parent's half-written frame (header claims 64 KiB, 100 bytes came), then the HELLO prefix, then a HELLO.
    const partial = encodeFrame(FrameType.DATA, 7, randomBytes(MAX_PAYLOAD)).subarray(0, HEADER_BYTES + 100);
    const hello = encodeFrame(FrameType.HELLO, 0, Buffer.from('{"v":1}'));
    const r = new FrameReader();
    assert.deepEqual(readAll(r, partial), []);
    assert.equal(r.buffered, partial.length);
    const got = readAll(r, Buffer.alloc(HELLO_PREFIX_BYTES), hello);
    assert.equal(got.length, 1);
    assert.equal(got[0]?.type, FrameType.HELLO);
    assert.equal(r.badCrcFrames, 1);
    assert.equal(r.buffered, 0);
  });

  it('a frame header inside the payload of a broken frame is still found', () => {
    const inner = encodeFrame(FrameType.OPENED, 9);
    const outer = Buffer.from(encodeFrame(FrameType.DATA, 1, Buffer.concat([Buffer.from([1]), inner, Buffer.alloc(50)])));
    outer[outer.length - 1] = (outer[outer.length - 1] as number) ^ 1;
    const got = readAll(new FrameReader(), outer);
    assert.deepEqual(
      got.map((f) => [f.type, f.stream]),
      [[FrameType.OPENED, 9]],
    );
  });

  it('decodes a 64 KiB frame fed a byte at a time in linear time', (t) => {
    const wire = encodeFrame(FrameType.DATA, 5, randomBytes(MAX_PAYLOAD));
    const chunks = Array.from(wire, (b) => Buffer.from([b]));
    const r = new FrameReader();
    const t0 = performance.now();
    const got = readAll(r, ...chunks);
    const ms = performance.now() - t0;
    t.diagnostic(`64 KiB frame in 1-byte chunks: ${ms.toFixed(1)} ms`);
    assert.equal(got.length, 1);
    assert.deepEqual(got[0]?.payload, wire.subarray(HEADER_BYTES));
    // Copying the held bytes on every push took ~300-500 ms here; a linear reader takes a few.
    assert.ok(ms < 100, `took ${ms.toFixed(1)} ms`);
  });

  it('holds at most one frame of bytes, whatever it is fed', () => {
    const r = new FrameReader();
    let max = 0;
    for (let i = 0; i < 300; i++) {
      // Random bytes with many magics; the header of a 64 KiB frame now and then.
      const chunk = randomBytes(4096);
      for (let j = 0; j < chunk.length; j += 37) chunk.set([0x46, 0x4b], j);
      if (i % 7 === 0) chunk.set(encodeFrame(FrameType.DATA, 1, Buffer.alloc(MAX_PAYLOAD)).subarray(0, 12), 100);
      readAll(r, chunk);
      max = Math.max(max, r.buffered);
    }
    assert.ok(max <= HEADER_BYTES + MAX_PAYLOAD, `held ${max} bytes`);
    assert.ok(r.garbageBytes > 0);
  });
});
