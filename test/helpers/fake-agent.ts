import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { encodeFrame, FrameReader, FrameType, HEADER_BYTES, MAX_PAYLOAD, type Frame } from '@forky/agent/internal';

/**
 * A guest of our own on a unix socket, speaking forky-agent frames: it parses what the host
 * sends and lets a test script what goes back, bytes and all (hostile ones included).
 */
export class FakeAgent {
  readonly conns: FakeConn[] = [];
  #server: net.Server;

  private constructor(
    readonly path: string,
    onConn: (c: FakeConn) => void | Promise<void>,
  ) {
    this.#server = net.createServer((s) => {
      const c = new FakeConn(s);
      this.conns.push(c);
      void Promise.resolve(onConn(c)).catch(() => s.destroy());
    });
  }

  static async start(onConn: (c: FakeConn) => void | Promise<void>): Promise<FakeAgent> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fagent-'));
    const f = new FakeAgent(path.join(dir, 'agent.sock'), onConn);
    await new Promise<void>((r) => f.#server.listen(f.path, r));
    return f;
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
    await fs.rm(path.dirname(this.path), { recursive: true, force: true });
  }
}

export class FakeConn {
  /** Every frame the host sent, in order. */
  readonly received: Frame[] = [];
  /** Credit the host granted per stream, minus DATA we sent. */
  readonly credit = new Map<number, number>();
  #taken = new Set<Frame>();
  #waiters: Array<() => void> = [];
  #listeners: Array<(f: Frame) => void> = [];
  closed = false;

  constructor(readonly socket: net.Socket) {
    const reader = new FrameReader();
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    socket.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === FrameType.CREDIT) this.credit.set(f.stream, (this.credit.get(f.stream) ?? 0) + f.payload.readUInt32BE(0));
        this.received.push(f);
        for (const l of this.#listeners) l(f);
      }
      this.#wake();
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Calls `fn` on every frame from now on. */
  onFrame(fn: (f: Frame) => void): void {
    this.#listeners.push(fn);
  }

  /** The first frame not yet taken that matches, waiting for it up to `timeoutMs`. */
  async next(match: (f: Frame) => boolean = () => true, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.received.find((x) => !this.#taken.has(x) && match(x));
      if (f) {
        this.#taken.add(f);
        return f;
      }
      if (this.closed) throw new Error('fake agent: host closed the connection');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('fake agent: no matching frame from the host in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits until the host has granted at least `n` bytes of credit on `stream`. */
  async waitCredit(stream: number, n: number, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((this.credit.get(stream) ?? 0) < n) {
      if (this.closed || Date.now() > deadline) throw new Error(`fake agent: no credit for ${n} bytes on stream ${stream}`);
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  raw(bytes: Uint8Array): boolean {
    return this.socket.write(bytes);
  }

  send(type: number, stream: number, payload?: Uint8Array): boolean {
    return this.raw(encodeFrame(type, stream, payload));
  }

  json(type: number, stream: number, value: unknown): boolean {
    return this.send(type, stream, Buffer.from(JSON.stringify(value)));
  }

  /** DATA on `channel`, counted against the host's credit (whether or not it fits). */
  data(stream: number, channel: number, bytes: Uint8Array): boolean {
    this.credit.set(stream, (this.credit.get(stream) ?? 0) - bytes.length);
    return this.send(FrameType.DATA, stream, Buffer.concat([Buffer.from([channel]), bytes]));
  }

  /** Waits for the HELLO and answers it (after `before`, bytes a test wants the host to skip); returns the session id. */
  async handshake(opts: { before?: Uint8Array; pid?: number } = {}): Promise<string> {
    const hello = await this.next((f) => f.type === FrameType.HELLO);
    const { session } = JSON.parse(hello.payload.toString()) as { session: string };
    if (opts.before) this.raw(opts.before);
    this.json(FrameType.HELLO_ACK, 0, { v: 1, session, agent: 'fake-agent/1', pid: opts.pid ?? 1 });
    return session;
  }

  /** The request of the next OPEN matching, with its stream id. */
  async open(
    match: (req: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 5000,
  ): Promise<{ id: number; req: Record<string, unknown> }> {
    const f = await this.next(
      (x) => x.type === FrameType.OPEN && match(JSON.parse(x.payload.toString()) as Record<string, unknown>),
      timeoutMs,
    );
    return { id: f.stream, req: JSON.parse(f.payload.toString()) as Record<string, unknown> };
  }
}

/** A seeded PRNG (mulberry32), so a failing hostile mix can be replayed. */
export function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function bytes(rand: () => number, n: number, avoid = 0x46): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    const v = Math.floor(rand() * 256);
    b[i] = v === avoid ? 0 : v;
  }
  return b;
}

/** The 10 kinds of hostile frame, none of which may touch a valid stream (ids ≥ 100000 are never opened). */
export function hostileFrame(kind: number, i: number, rand: () => number): Buffer {
  switch (kind) {
    case 0: // truncated: the header claims 200 bytes, 50 come; later frames complete it and fail its CRC
      return encodeFrame(FrameType.MSG, 100000 + i, bytes(rand, 200)).subarray(0, HEADER_BYTES + 50);
    case 1: {
      const f = Buffer.from(encodeFrame(FrameType.DATA, 100000 + i, bytes(rand, 10)));
      f.writeUInt32BE(MAX_PAYLOAD + 1 + Math.floor(rand() * 1e9), 8); // oversized length
      return f;
    }
    case 2: {
      const f = Buffer.from(encodeFrame(FrameType.DATA, 1, Buffer.concat([Buffer.from([1]), bytes(rand, 30)])));
      f[14] = (f[14] as number) ^ 0x5a; // bad CRC on a frame for the good stream
      return f;
    }
    case 3:
      return encodeFrame(0x7e, 0, bytes(rand, 8)); // unknown type
    case 4:
      return encodeFrame(FrameType.DATA, 200000 + i, Buffer.from([1, 2, 3])); // unknown stream
    case 5:
      return encodeFrame(FrameType.END, 300000 + i, Buffer.from('{"ok":true}')); // END for a stream never opened
    case 6: {
      const f = Buffer.from(encodeFrame(FrameType.OPENED, 1));
      f[3] = 1; // flags
      return f;
    }
    case 7:
      return encodeFrame(FrameType.HELLO_ACK, 0, Buffer.from(JSON.stringify({ v: 1, session: 'f'.repeat(32), agent: 'x', pid: 1 })));
    case 8:
      return encodeFrame(FrameType.PONG, 0, bytes(rand, 8)); // PONG for no PING
    default:
      return bytes(rand, 40); // loose garbage
  }
}

export const GOOD_BYTES = 2 * 1024 * 1024;
export const goodData = (): Buffer => Buffer.from(Array.from({ length: GOOD_BYTES }, (_, i) => (i * 7 + (i >> 10)) & 0xff));

/** What each violating stream does (its cmd[0] names it) and the reason the host must give. */
export const VIOLATIONS: Record<string, { send: (c: FakeConn, id: number) => void; why: RegExp }> = {
  'beyond-credit': { send: (c, id) => c.data(id, 1, Buffer.alloc(5000)), why: /beyond the \d+ bytes of credit/ },
  'bad-json': { send: (c, id) => c.send(FrameType.MSG, id, Buffer.from('{"type":"started",')), why: /not JSON/ },
  'unknown-msg': { send: (c, id) => c.json(FrameType.MSG, id, { type: 'weird' }), why: /does not match/ },
  'extra-field': { send: (c, id) => c.json(FrameType.MSG, id, { type: 'started', pid: 5, evil: true }), why: /does not match/ },
  'wrong-msg': { send: (c, id) => c.json(FrameType.MSG, id, { type: 'entries', entries: [] }), why: /MSG entries on a exec/ },
  'bad-end': { send: (c, id) => c.json(FrameType.END, id, { ok: true, exitCode: 'zero' }), why: /END does not match/ },
  channel0: { send: (c, id) => c.data(id, 0, Buffer.from('x')), why: /DATA on channel 0/ },
  'opened-twice': { send: (c, id) => c.send(FrameType.OPENED, id), why: /second OPENED/ },
  'started-twice': { send: (c, id) => c.json(FrameType.MSG, id, { type: 'started', pid: 44 }), why: /a second MSG started/ },
  'eof-twice': {
    send: (c, id) => {
      c.send(FrameType.EOF, id, Buffer.from([1]));
      c.send(FrameType.EOF, id, Buffer.from([1]));
    },
    why: /a second EOF on channel 1/,
  },
};
