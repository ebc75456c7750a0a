import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import { ForkyError, asForkyError } from '@forky/base';
import { DEFAULT_STREAM_WINDOW, STREAM_CHUNK_MAX, STREAM_HEADERS, STREAM_IDLE_MS, STREAM_KEEPALIVE_MS } from '@forky/contract';
import { StreamEndBody, type StreamRef } from '@forky/contract';
import { headerOf, safeHeaders } from './headers.js';
import { watchConnection, watched } from './conn-watch.js';

export type StreamChunk =
  | { kind: 'stdout' | 'stderr' | 'data'; seq: number; bytes: Uint8Array }
  | { kind: 'event'; seq: number; event: { type: string } & Record<string, unknown> }
  | { kind: 'eof'; seq: number } // a port connection's guest side half-closed: no more `data`, `end` still comes
  | { kind: 'end'; seq: number; end: StreamEnd };
export type StreamEnd = StreamEndBody;

export interface OpenStreamOptions {
  /** Deadline of the open request (default 30 s). */
  timeoutMs?: number;
  /** Bytes the host may send ahead of what has been taken (default 256 KiB). */
  window?: number;
  /** For tests: how often credit goes out when nothing else does, and how long a silent host is waited for. */
  keepaliveMs?: number;
  silenceMs?: number;
}

/** For tests (`@forky/bus/internal`): `timer` is undefined once stopped, false while it runs (unref'd); `watched`, by its connection. */
export let clientStreamState: (s: ClientStream) => { timer: boolean | undefined; watched: boolean };

const json = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The client's end of a stream (STREAMS.md). Messages on `out` are taken in `Forky-Seq` order as they arrive; what the
 * caller has not taken yet (`stdout`, `stderr`, `data`, `event` bodies) is at most the window it granted, since credit is
 * given back only as it is taken, and more is a protocol error. A loop left before the end (`break`, a throw) cancels
 * the stream; the keepalive timer is unref'd: a stream nobody reads any more never keeps the process alive.
 */
export class ClientStream implements AsyncIterable<StreamChunk> {
  readonly #nc: NatsConnection;
  readonly #ref: StreamRef | undefined;
  readonly pid?: number;
  readonly #window: number;
  readonly #queue: Array<{ chunk: StreamChunk; size: number }> = [];
  #sub: Subscription | undefined;
  #expected = 1;
  #inSeq = 0;
  #inCredit = 0;
  /** Bytes taken since credit last went out; and what the host may still send, by our count. */
  #taken = 0;
  #hostCredit = 0;
  #ended = false;
  #closed = false;
  #inputClosed = false;
  #error: ForkyError | undefined;
  #lastHeard = Date.now();
  #wake: (() => void) | undefined;
  #creditWaiters: Array<() => void> = [];
  #writing: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  readonly #onLost = (why: string): void => this.#fail(new ForkyError('UNAVAILABLE', `${why} under stream ${this.#ref?.sid}`));

  static {
    clientStreamState = (s) => ({ timer: s.#timer?.hasRef(), watched: !!watched.get(s.#nc)?.has(s.#onLost) });
  }

  /** Use openStream. A detached exec has no `ref`: the stream is only its end. */
  constructor(nc: NatsConnection, ref: StreamRef | undefined, pid: number | undefined, opts: OpenStreamOptions = {}) {
    this.#nc = nc;
    this.#ref = ref;
    if (pid !== undefined) this.pid = pid;
    this.#window = opts.window ?? DEFAULT_STREAM_WINDOW;
    if (!ref) {
      this.#queue.push({ chunk: { kind: 'end', seq: 0, end: { ok: true } }, size: 0 });
      this.#ended = true;
      return;
    }
    // Subscribed before the first credit: the host sends nothing until it has some.
    this.#sub = nc.subscribe(ref.out, { callback: (err, msg) => this.#onMessage(err, msg) });
    this.#credit(this.#window);
    const silenceMs = opts.silenceMs ?? STREAM_IDLE_MS;
    this.#timer = setInterval(() => this.#tick(silenceMs), Math.min(opts.keepaliveMs ?? STREAM_KEEPALIVE_MS, silenceMs / 3)).unref();
    watchConnection(nc, this.#onLost);
  }

  get ref(): StreamRef {
    if (!this.#ref) throw new ForkyError('INVALID_STATE', `a detached process${this.pid ? ` (pid ${this.pid})` : ''} has no stream`);
    return this.#ref;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamChunk> {
    try {
      for (;;) {
        const next = this.#queue.shift();
        if (next) {
          this.#taken += next.size;
          // Given back in batches: a message per chunk would double the traffic.
          if (this.#taken >= Math.min(this.#window / 4, STREAM_CHUNK_MAX)) this.#credit(this.#taken);
          yield next.chunk;
          if (next.chunk.kind === 'end') return;
        } else if (this.#error) throw this.#error;
        else if (this.#closed) return;
        // Woken by a message, an error or close; the silence timer bounds the wait.
        else await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      // Left before its end (a break, a throw): the host stops its work now, not after its idle time.
      this.cancel();
      this.close();
    }
  }

  /** Sends input once the host has granted credit for it, in chunks of at most 64 KiB. */
  write(bytes: Uint8Array): Promise<void> {
    return this.#inTurn(async () => {
      if (this.#inputClosed) throw new ForkyError('INVALID_STATE', 'the stream input is closed');
      for (let at = 0, n = 0; at < bytes.length; at += n) {
        this.#usable();
        n = Math.min(this.#inCredit, STREAM_CHUNK_MAX, bytes.length - at);
        if (n <= 0) {
          await new Promise<void>((resolve) => this.#creditWaiters.push(resolve));
          continue;
        }
        this.#inCredit -= n;
        this.#sendIn('data', bytes.subarray(at, at + n));
      }
    });
  }

  /** Ends the input, after what was written before it. */
  closeInput(): Promise<void> {
    return this.#inTurn(async () => {
      this.#usable();
      if (!this.#inputClosed) this.#sendIn('eof');
      this.#inputClosed = true;
    });
  }

  /** Input goes out in the order it was given, one write at a time. */
  #inTurn(fn: () => Promise<void>): Promise<void> {
    const run = this.#writing.then(fn);
    this.#writing = run.catch(() => undefined);
    return run;
  }

  resize(rows: number, cols: number): void {
    if (this.#ended || this.#closed || !this.#ref) return;
    this.#sendIn('resize', json({ rows, cols }));
  }

  /** Asks the host to stop the stream's work; its `end` still comes. */
  cancel(): void {
    if (this.#ended || this.#closed || !this.#ref) return;
    this.#publish(this.#ref.cancel);
  }

  /** Stops listening: the host cancels the stream once it has not heard from us for its idle time. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop();
  }

  /** Throws if the stream can no longer take input. */
  #usable(): void {
    if (this.#error) throw this.#error;
    if (this.#closed) throw new ForkyError('INVALID_STATE', 'the stream is closed');
    if (this.#ended) throw new ForkyError('INVALID_STATE', 'the stream has ended');
  }

  #sendIn(kind: 'data' | 'eof' | 'resize', body?: Uint8Array): void {
    this.#publish((this.#ref as StreamRef).in, body, { [STREAM_HEADERS.seq]: ++this.#inSeq, [STREAM_HEADERS.kind]: kind });
  }

  #credit(bytes: number): void {
    if (this.#ended || this.#closed || !this.#ref) return;
    this.#taken -= Math.min(bytes, this.#taken);
    this.#hostCredit += bytes;
    this.#publish(this.#ref.credit, json({ bytes }));
  }

  #publish(subject: string, body?: Uint8Array, hdrs?: Record<string, unknown>): void {
    try {
      this.#nc.publish(subject, body ?? new Uint8Array(0), hdrs ? { headers: safeHeaders(hdrs) } : undefined);
    } catch (e) {
      this.#fail(new ForkyError('UNAVAILABLE', `stream publish failed: ${asForkyError(e).message}`, { cause: e }));
    }
  }

  #onMessage(err: Error | null, msg: Msg): void {
    if (this.#ended || this.#closed || this.#error) return;
    const ref = this.#ref as StreamRef;
    if (err) return this.#fail(new ForkyError('UNAVAILABLE', `stream ${ref.sid}: subscription closed: ${err.message}`, { cause: err }));
    this.#lastHeard = Date.now();
    try {
      const seq = Number(headerOf(msg, STREAM_HEADERS.seq));
      if (seq !== this.#expected)
        throw new ForkyError('UNAVAILABLE', `stream ${ref.sid}: message ${seq} came after ${this.#expected - 1}: some were lost`);
      this.#expected++;
      this.#take(headerOf(msg, STREAM_HEADERS.kind), seq, msg);
    } catch (e) {
      this.cancel();
      this.#fail(asForkyError(e));
    }
    this.#wakeAll();
  }

  #take(kind: string | undefined, seq: number, msg: Msg): void {
    switch (kind) {
      case 'stdout':
      case 'stderr':
      case 'data':
        return this.#counted({ kind, seq, bytes: msg.data }, msg.data.length);
      case 'credit': {
        const b = msg.json<unknown>();
        if (!isObject(b) || !Number.isSafeInteger(b.bytes) || (b.bytes as number) < 0) throw protocol('a bad credit body');
        this.#inCredit += b.bytes as number;
        return;
      }
      case 'event': {
        const b = msg.json<unknown>();
        if (!isObject(b) || typeof b.type !== 'string') throw protocol('an event without a type');
        return this.#counted({ kind, seq, event: b as { type: string } & Record<string, unknown> }, msg.data.length);
      }
      case 'eof':
        return this.#counted({ kind, seq }, 0);
      case 'end': {
        const end = StreamEndBody.safeParse(msg.json<unknown>());
        if (!end.success) throw protocol('an end body STREAMS.md does not name');
        this.#queue.push({ chunk: { kind, seq, end: end.data }, size: 0 });
        this.#ended = true;
        return this.#stop();
      }
      default:
        throw protocol(`an unknown kind ${JSON.stringify(kind ?? null).slice(0, 40)}`);
    }
  }

  /** Queues a message that counts against the credit we granted: beyond it, the host broke the protocol. */
  #counted(chunk: StreamChunk, size: number): void {
    if ((this.#hostCredit -= size) < 0) throw protocol(`${-this.#hostCredit} bytes beyond the credit granted`);
    this.#queue.push({ chunk, size });
  }

  /** Our keepalive (with any credit owed), and the host's silence checked. */
  #tick(silenceMs: number): void {
    this.#credit(this.#taken);
    if (Date.now() - this.#lastHeard > silenceMs)
      this.#fail(new ForkyError('TIMEOUT', `no word from host ${this.#ref?.host} on stream ${this.#ref?.sid} for ${silenceMs} ms`));
  }

  #fail(e: ForkyError): void {
    if (this.#ended || this.#closed || this.#error) return;
    this.#error = e;
    this.#stop();
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#sub?.unsubscribe();
    watched.get(this.#nc)?.delete(this.#onLost);
    this.#timer = this.#sub = undefined;
    this.#wakeAll();
  }

  #wakeAll(): void {
    this.#wake?.();
    for (const w of this.#creditWaiters.splice(0)) w();
  }
}

const protocol = (what: string): ForkyError => new ForkyError('INTERNAL', `the host sent ${what} on a stream`);
