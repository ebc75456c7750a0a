import { ForkyError } from '@forky/base';
import { FrameType, MAX_PAYLOAD } from './frame.js';
import type { AgentEnd, AgentMsg, GuestEvent, GuestRequest, GuestStream } from './types.js';

/** What a stream needs from its session. */
export interface StreamHost {
  /** Sends a frame on the stream (held back until its OPEN went out); false when the socket is backed up. */
  sendFrame(stream: AgentStream, type: number, payload?: Buffer): boolean;
  /** Grants the agent `n` more bytes of credit (queued grants merge). */
  sendCredit(stream: AgentStream, n: number): void;
  /** Sends a resize MSG with the size takeResize() gives when it is written. */
  sendResize(stream: AgentStream): void;
  /** Resolves once the socket takes writes again (or the session closed). */
  drained(): Promise<void>;
  requestCancel(stream: AgentStream): void;
  /** Called whenever the stream's queue grew or shrank (the session pauses reading while one is over its window). */
  queueChanged(stream: AgentStream): void;
}

interface Queued {
  event: GuestEvent;
  bytes: number;
}

/**
 * One stream's host side: a bounded queue of the agent's events, pulled by one consumer. Credit
 * goes back to the agent only as the consumer takes events, so at most `window` bytes of DATA
 * (plus one frame of MSG, after which the session stops reading) wait here.
 */
export class AgentStream implements GuestStream {
  readonly events: AsyncIterable<GuestEvent>;
  readonly ended: Promise<AgentEnd>;
  /** Credit the agent still holds for sending us DATA. */
  outstanding = 0;
  /** Credit the agent granted us for input and we have not used. */
  inputCredit = 0;
  queuedBytes = 0;
  openSent = false;
  opened = false;
  /** The agent sent its END (or we stopped waiting for one): it has forgotten the stream. */
  agentEnded = false;
  cancelRequested = false;
  cancelSent = false;
  /** Frames sent before the OPEN went out (quiesce holds OPENs back); `resize`: one with the latest size. */
  readonly deferred: Array<{ type: number; payload?: Buffer | undefined; resize?: boolean }> = [];
  /** MSG types that may come once (`started`, `stat`) and EOF channels, seen so far. */
  readonly seen = new Set<string>();
  #size: { rows: number; cols: number } | undefined;
  /** A resize is queued or deferred: later sizes only replace #size (one waits per stream). */
  #resizeWaiting = false;
  #end: AgentEnd | undefined;
  #resolveEnded!: (end: AgentEnd) => void;
  #queue: Queued[] = [];
  #iterated = false;
  #done = false;
  #wakeReader: (() => void) | undefined;
  #wakeWriters: Array<() => void> = [];
  #writeChain: Promise<void> = Promise.resolve();
  #inputClosed = false;

  constructor(
    readonly id: number,
    readonly request: GuestRequest,
    readonly window: number,
    private readonly host: StreamHost,
  ) {
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    this.events = { [Symbol.asyncIterator]: () => this.#iterator() };
  }

  get op(): GuestRequest['op'] {
    return this.request.op;
  }

  /** The END delivered to the consumer, once there is one. */
  get end(): AgentEnd | undefined {
    return this.#end;
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  // ---- called by the session as frames arrive -------------------------------------------------

  onData(channel: 1 | 2, bytes: Buffer): void {
    this.outstanding -= bytes.length;
    if (this.cancelRequested || this.#end) return;
    this.#push({ kind: 'data', channel, bytes }, bytes.length);
  }

  onEof(channel: 1 | 2): void {
    if (!this.cancelRequested && !this.#end) this.#push({ kind: 'eof', channel }, 0);
  }

  onMsg(msg: AgentMsg, bytes: number): void {
    if (!this.cancelRequested && !this.#end) this.#push({ kind: 'msg', msg }, bytes);
  }

  onCredit(n: number): void {
    this.inputCredit += n;
    this.#wakeAllWriters();
  }

  /** Delivers the END (the agent's or a made-up one); later calls do nothing. `discard` drops what is queued. */
  finish(end: AgentEnd, discard: boolean): void {
    if (this.#end) return;
    this.#end = end;
    if (discard) this.#discard();
    this.#queue.push({ event: { kind: 'end', end }, bytes: 0 });
    this.#resolveEnded(end);
    this.#wakeAllWriters();
    this.#wakeReader?.();
    this.host.queueChanged(this);
  }

  /** Drops queued DATA and MSGs (a cancelled stream's output is not wanted). */
  #discard(): void {
    this.#queue = this.#queue.filter((q) => q.event.kind === 'end');
    this.queuedBytes = 0;
  }

  #push(event: GuestEvent, bytes: number): void {
    this.#queue.push({ event, bytes });
    this.queuedBytes += bytes;
    this.#wakeReader?.();
    this.host.queueChanged(this);
  }

  // ---- the consumer's side --------------------------------------------------------------------

  #iterator(): AsyncIterator<GuestEvent> {
    if (this.#iterated) throw new ForkyError('INVALID_STATE', `stream ${this.id} (${this.op}): events can be iterated once`);
    this.#iterated = true;
    return {
      next: () => this.#next(),
      return: async () => {
        // A consumer that stops iterating wants nothing more: stop the agent's work too.
        this.#done = true;
        this.cancel();
        this.#discard();
        this.host.queueChanged(this);
        return { done: true, value: undefined };
      },
    };
  }

  async #next(): Promise<IteratorResult<GuestEvent>> {
    for (;;) {
      if (this.#done) return { done: true, value: undefined };
      const q = this.#queue.shift();
      if (q) {
        this.queuedBytes -= q.bytes;
        if (q.event.kind === 'end') this.#done = true;
        else this.#grant();
        this.host.queueChanged(this);
        return { done: false, value: q.event };
      }
      await new Promise<void>((resolve) => (this.#wakeReader = resolve));
      this.#wakeReader = undefined;
    }
  }

  /** Tops the agent's credit up to the window minus what waits here, in batches of at least half a window. */
  #grant(): void {
    if (this.cancelRequested || this.#end || !this.openSent) return;
    const room = this.window - this.queuedBytes - this.outstanding;
    if (room <= 0 || (room * 2 < this.window && this.queuedBytes > 0)) return;
    this.outstanding += room;
    this.host.sendCredit(this, room);
  }

  write(bytes: Uint8Array): Promise<void> {
    const p = this.#writeChain.then(() => this.#writeNow(bytes));
    this.#writeChain = p.catch(() => undefined);
    return p;
  }

  async #writeNow(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) {
      if (this.#end) throw new ForkyError('INVALID_STATE', `stream ${this.id} (${this.op}) ended before its input was written`);
      if (this.#inputClosed) throw new ForkyError('INVALID_STATE', `stream ${this.id} (${this.op}): input already closed`);
      if (this.inputCredit <= 0) {
        await new Promise<void>((resolve) => this.#wakeWriters.push(resolve));
        continue;
      }
      const n = Math.min(this.inputCredit, MAX_PAYLOAD - 1, bytes.length - off);
      const payload = Buffer.allocUnsafe(n + 1);
      payload[0] = 0;
      payload.set(bytes.subarray(off, off + n), 1);
      this.inputCredit -= n;
      off += n;
      if (!this.host.sendFrame(this, FrameType.DATA, payload)) await this.host.drained();
    }
  }

  #wakeAllWriters(): void {
    const w = this.#wakeWriters;
    this.#wakeWriters = [];
    for (const wake of w) wake();
  }

  closeInput(): void {
    if (this.#inputClosed) return;
    void this.#writeChain.then(() => {
      if (this.#inputClosed || this.#end) return;
      this.#inputClosed = true;
      this.host.sendFrame(this, FrameType.EOF, Buffer.from([0]));
    });
  }

  resize(rows: number, cols: number): void {
    if (this.#end || !Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1 || rows > 65535 || cols > 65535) return;
    this.#size = { rows, cols };
    if (this.#resizeWaiting) return;
    this.#resizeWaiting = true;
    this.host.sendResize(this);
  }

  /** The resize MSG's payload, with the latest size; the next resize() sends again. */
  takeResize(): Buffer {
    this.#resizeWaiting = false;
    return Buffer.from(JSON.stringify({ type: 'resize', ...this.#size }));
  }

  cancel(): void {
    if (this.cancelRequested || this.#end) return;
    this.cancelRequested = true;
    this.#discard();
    this.host.queueChanged(this);
    this.host.requestCancel(this);
  }
}
