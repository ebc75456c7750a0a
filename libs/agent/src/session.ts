import type net from 'node:net';
import { ForkyError, ValidationError, type Logger } from '@forky/base';
import { callStream } from './call.js';
import { applyStreamFrame, goneEnd, protocolEnd } from './dispatch.js';
import { DEFAULT_CANCEL_GRACE_MS, DEFAULT_WINDOW, MAX_GARBAGE_BYTES, MAX_INVALID_FRAMES, MAX_WINDOW, type SessionStats } from './limits.js';
import { encodeFrame, FrameReader, FrameType, MAX_PAYLOAD, type Frame } from './frame.js';
import type { HelloAck } from './messages.js';
import { Pings } from './pings.js';
import { AgentStream, type StreamHost } from './stream.js';
import type { AgentEnd, AgentMsg, GuestRequest, GuestSession } from './types.js';

export interface SessionOptions {
  log?: Logger | undefined;
  cancelGraceMs?: number | undefined;
}

export class AgentSession implements GuestSession, StreamHost {
  readonly closed: Promise<void>;
  /** Who answered the HELLO. */
  readonly agent: { name: string; pid: number };
  #resolveClosed!: () => void;
  #isClosed = false;
  #closeReason = '';
  #streams = new Map<number, AgentStream>();
  #nextId = 1;
  #invalid = 0;
  #pings = new Pings();
  #quiesceDepth = 0;
  #quiesceWaiters: Array<() => void> = [];
  #heldOpens: AgentStream[] = [];
  #heldCancels: AgentStream[] = [];
  #overfull = new Set<AgentStream>();
  #paused = false;
  #pumping = false;
  #drainWaiters: Array<() => void> = [];
  readonly #cancelGraceMs: number;
  readonly #log: Logger | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly reader: FrameReader,
    readonly hello: HelloAck,
    readonly socketPath: string,
    opts: SessionOptions = {},
  ) {
    this.agent = { name: hello.agent, pid: hello.pid };
    this.#log = opts.log;
    this.#cancelGraceMs = opts.cancelGraceMs ?? DEFAULT_CANCEL_GRACE_MS;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      this.#pump();
    });
    socket.on('drain', () => this.#wakeDrain());
    socket.on('error', (err) => this.#close(`agent socket error: ${err.message}`));
    socket.on('close', () => this.#close('agent socket closed'));
    // Frames that came in the same chunk as the HELLO_ACK.
    this.#pump();
  }

  stats(): SessionStats {
    let maxQueuedBytes = 0;
    for (const s of this.#streams.values()) maxQueuedBytes = Math.max(maxQueuedBytes, s.queuedBytes);
    return {
      readerBuffered: this.reader.buffered,
      garbageBytes: this.reader.garbageBytes,
      invalidFrames: this.#invalidFrames(),
      streams: this.#streams.size,
      maxQueuedBytes,
      paused: this.#paused,
      closed: this.#isClosed,
    };
  }

  open(req: GuestRequest, opts: { window?: number } = {}): AgentStream {
    const window = opts.window ?? DEFAULT_WINDOW;
    if (!Number.isInteger(window) || window < 1 || window > MAX_WINDOW) {
      throw new ValidationError(`window must be an integer from 1 to ${MAX_WINDOW}`, { field: 'window' });
    }
    const payload = Buffer.from(JSON.stringify(req));
    if (payload.length > MAX_PAYLOAD) throw new ValidationError(`${req.op} request of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
    const stream = new AgentStream(this.#nextId++, req, window, this);
    if (this.#isClosed) {
      stream.finish(goneEnd(stream, this.#closeReason), false);
      return stream;
    }
    this.#streams.set(stream.id, stream);
    if (this.#quiesceDepth > 0) this.#heldOpens.push(stream);
    else this.#sendOpen(stream, payload);
    return stream;
  }

  call(req: GuestRequest, timeoutMs: number): Promise<{ end: AgentEnd; msgs: AgentMsg[] }> {
    return callStream(this.open(req), timeoutMs, `forky-agent ${req.op} on ${this.socketPath}`);
  }

  ping(timeoutMs: number): Promise<void> {
    if (this.#isClosed) return Promise.reject(new ForkyError('UNAVAILABLE', `forky-agent session closed: ${this.#closeReason}`));
    return this.#pings.start(
      (token) => this.socket.write(encodeFrame(FrameType.PING, 0, token)),
      timeoutMs,
      `forky-agent PING on ${this.socketPath}`,
    );
  }

  quiesce(timeoutMs: number): Promise<() => void> {
    this.#quiesceDepth++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (--this.#quiesceDepth === 0) this.#releaseHeld();
    };
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#quiesceWaiters = this.#quiesceWaiters.filter((w) => w !== done);
        this.#log?.warn({ socket: this.socketPath, timeoutMs }, 'forky-agent quiesce: requests still unanswered at the deadline');
        resolve(release);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(release);
      };
      if (this.#isClosed || this.#unanswered() === 0) done();
      else this.#quiesceWaiters.push(done);
    });
  }

  close(): void {
    this.#close('closed by the host');
  }

  sendFrame(stream: AgentStream, type: number, payload?: Uint8Array): boolean {
    if (this.#isClosed || stream.agentEnded) return true;
    if (!stream.openSent) {
      stream.deferred.push({ type, payload });
      return true;
    }
    return this.socket.write(encodeFrame(type, stream.id, payload));
  }

  drained(): Promise<void> {
    if (this.#isClosed || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  requestCancel(stream: AgentStream): void {
    if (stream.agentEnded || stream.cancelSent || this.#isClosed) return;
    if (!stream.openSent) {
      this.#heldOpens = this.#heldOpens.filter((s) => s !== stream);
      this.#streams.delete(stream.id);
      stream.finish({ ok: false, code: 'CANCELLED', message: 'cancelled before its OPEN was sent' }, true);
      return;
    }
    if (this.#quiesceDepth > 0) {
      if (!this.#heldCancels.includes(stream)) this.#heldCancels.push(stream);
      return;
    }
    this.#sendCancel(stream);
  }

  queueChanged(stream: AgentStream): void {
    if (stream.queuedBytes > stream.window) this.#overfull.add(stream);
    else if (this.#overfull.delete(stream) && this.#overfull.size === 0) this.#pump();
  }

  #sendOpen(stream: AgentStream, payload = Buffer.from(JSON.stringify(stream.request))): void {
    this.socket.write(encodeFrame(FrameType.OPEN, stream.id, payload));
    stream.openSent = true;
    const credit = Buffer.alloc(4);
    credit.writeUInt32BE(stream.window);
    stream.outstanding = stream.window;
    this.socket.write(encodeFrame(FrameType.CREDIT, stream.id, credit));
    for (const f of stream.deferred.splice(0)) this.socket.write(encodeFrame(f.type, stream.id, f.payload));
  }

  #sendCancel(stream: AgentStream): void {
    if (stream.agentEnded || stream.cancelSent || this.#isClosed) return;
    stream.cancelSent = true;
    this.socket.write(encodeFrame(FrameType.CANCEL, stream.id));
    setTimeout(() => {
      if (stream.agentEnded || this.#streams.get(stream.id) !== stream) return;
      // The agent does not answer: forget the stream, so nothing waits on it (quiesce included).
      stream.agentEnded = true;
      this.#streams.delete(stream.id);
      stream.finish(protocolEnd(stream, `no END within ${this.#cancelGraceMs} ms of CANCEL`), true);
      this.#checkQuiesced();
    }, this.#cancelGraceMs).unref();
  }

  #releaseHeld(): void {
    if (this.#isClosed) return;
    for (const s of this.#heldOpens.splice(0)) this.#sendOpen(s);
    for (const s of this.#heldCancels.splice(0)) this.#sendCancel(s);
  }

  #unanswered(): number {
    let n = 0;
    for (const s of this.#streams.values()) if (!s.agentEnded && ((s.openSent && !s.opened) || s.cancelSent)) n++;
    return n;
  }

  #checkQuiesced(): void {
    if (this.#quiesceWaiters.length === 0 || (!this.#isClosed && this.#unanswered() > 0)) return;
    for (const w of this.#quiesceWaiters.splice(0)) w();
  }

  #wakeDrain(): void {
    for (const w of this.#drainWaiters.splice(0)) w();
  }

  #invalidFrames(): number {
    return this.reader.badCrcFrames + this.#invalid;
  }

  /** Handles frames until the reader runs dry or a stream's queue is over its window (then stops reading the socket). */
  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (!this.#isClosed && this.#overfull.size === 0) {
        const frame = this.reader.next();
        if (this.#overLimits()) return;
        if (!frame) break;
        this.#handle(frame);
      }
      if (this.#isClosed) return;
      const pause = this.#overfull.size > 0;
      if (pause !== this.#paused) {
        this.#paused = pause;
        if (pause) this.socket.pause();
        else this.socket.resume();
      }
    } finally {
      this.#pumping = false;
    }
  }

  #overLimits(): boolean {
    if (this.reader.garbageBytes <= MAX_GARBAGE_BYTES && this.#invalidFrames() <= MAX_INVALID_FRAMES) return false;
    this.#close(`forky-agent sent too much garbage (${this.reader.garbageBytes} bytes dropped, ${this.#invalidFrames()} invalid frames)`);
    return true;
  }

  #invalidFrame(frame: Frame, why: string): void {
    this.#invalid++;
    this.#log?.debug({ socket: this.socketPath, type: frame.type, stream: frame.stream, why }, 'forky-agent: invalid frame dropped');
  }

  #handle(frame: Frame): void {
    if (frame.type === FrameType.PONG) {
      if (frame.stream !== 0 || !this.#pings.answer(frame.payload)) this.#invalidFrame(frame, 'PONG for no PING');
      return;
    }
    if (frame.type < FrameType.OPENED || frame.type > FrameType.END) return this.#invalidFrame(frame, 'not a frame the agent sends here');
    const stream = this.#streams.get(frame.stream);
    if (!stream || !stream.openSent) return this.#invalidFrame(frame, 'frame for an unknown stream');
    if (stream.end) {
      // Ended here (violation, cancel grace) and waiting for the agent's END: the rest is in flight, not hostile.
      if (frame.type === FrameType.END) this.#forget(stream);
      return;
    }
    const violation = applyStreamFrame(stream, frame);
    if (frame.type === FrameType.END) this.#streams.delete(stream.id);
    if (frame.type === FrameType.OPENED || frame.type === FrameType.END) this.#checkQuiesced();
    if (violation !== undefined) this.#violate(stream, violation);
  }

  #violate(stream: AgentStream, why: string): void {
    this.#invalid++;
    this.#log?.warn({ socket: this.socketPath, stream: stream.id, op: stream.op, why }, 'forky-agent broke the protocol on a stream');
    stream.finish(protocolEnd(stream, why), true);
    if (stream.agentEnded) this.#checkQuiesced();
    else this.requestCancel(stream);
  }

  #forget(stream: AgentStream): void {
    stream.agentEnded = true;
    this.#streams.delete(stream.id);
    this.#heldCancels = this.#heldCancels.filter((s) => s !== stream);
    this.#checkQuiesced();
  }

  #close(reason: string): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#closeReason = reason;
    this.#log?.info({ socket: this.socketPath, reason }, 'forky-agent session closed');
    this.socket.destroy();
    for (const s of this.#streams.values()) s.finish(goneEnd(s, this.#closeReason), false);
    this.#streams.clear();
    this.#heldOpens = [];
    this.#heldCancels = [];
    this.#overfull.clear();
    this.#pings.rejectAll(new ForkyError('UNAVAILABLE', `forky-agent session closed: ${reason}`));
    this.#checkQuiesced();
    this.#wakeDrain();
    this.#resolveClosed();
  }
}
