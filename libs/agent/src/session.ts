import type net from 'node:net';
import { ForkyError, type Logger } from '@forky/base';
import { callStream, probeSession } from './call.js';
import { applyStreamFrame, checkOpen, goneEnd, protocolEnd } from './dispatch.js';
import { DEFAULT_CANCEL_GRACE_MS, MAX_GARBAGE_BYTES, MAX_INVALID_FRAMES, type SessionOptions, type SessionStats } from './limits.js';
import { FrameReader, FrameType, type Frame } from './frame.js';
import { ForgottenStreams } from './forgotten.js';
import type { HelloAck } from './messages.js';
import { Outbox } from './outbox.js';
import { Pings } from './pings.js';
import { QuiesceHold } from './quiesce.js';
import { AgentStream, type StreamHost } from './stream.js';
import type { AgentEnd, AgentMsg, GuestRequest, GuestSession } from './types.js';

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
  #hold: QuiesceHold;
  #outbox: Outbox;
  #forgotten = new ForgottenStreams();
  #overfull = new Set<AgentStream>();
  #paused = false;
  #pumping = false;
  #heard = Date.now();
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
    this.#outbox = new Outbox(socket);
    this.#hold = new QuiesceHold({
      isClosed: () => this.#isClosed,
      unanswered: () => this.#unanswered(),
      sendOpen: (st) => this.#sendOpen(st),
      sendCancel: (st) => this.#sendCancel(st),
    });
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      this.#pump();
    });
    socket.on('error', (err) => this.#close(`agent socket error: ${err.message}`));
    socket.on('close', () => this.#close('agent socket closed'));
    // Frames that came in the same chunk as the HELLO_ACK.
    this.#pump();
  }

  /** When the last good frame came; now while the host itself is not reading (its silence says nothing then). */
  get lastHeardMs(): number {
    return this.#paused ? Date.now() : this.#heard;
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
      outboxBytes: this.#outbox.queuedBytes,
    };
  }

  open(req: GuestRequest, opts: { window?: number } = {}): AgentStream {
    const { window, payload } = checkOpen(req, opts.window);
    const stream = new AgentStream(this.#nextId++, req, window, this);
    if (this.#isClosed) {
      stream.finish(goneEnd(stream, this.#closeReason), false);
      return stream;
    }
    if (this.#outbox.full) {
      stream.finish({ ok: false, code: 'BUSY', message: `forky-agent on ${this.socketPath} does not read what it was sent` }, false);
      return stream;
    }
    this.#streams.set(stream.id, stream);
    if (this.#hold.active) this.#hold.holdOpen(stream);
    else this.#sendOpen(stream, payload);
    return stream;
  }

  call(req: GuestRequest, timeoutMs: number): Promise<{ end: AgentEnd; msgs: AgentMsg[] }> {
    return callStream(this.open(req), timeoutMs, `forky-agent ${req.op} on ${this.socketPath}`);
  }

  ping(timeoutMs: number): Promise<void> {
    if (this.#isClosed) return Promise.reject(new ForkyError('UNAVAILABLE', `forky-agent session closed: ${this.#closeReason}`));
    if (this.#outbox.full) return Promise.reject(new ForkyError('UNAVAILABLE', `forky-agent on ${this.socketPath} does not read its port`));
    return this.#pings.start(
      (token) => this.#outbox.send(undefined, FrameType.PING, token),
      timeoutMs,
      `forky-agent PING on ${this.socketPath}`,
    );
  }

  probe(timeoutMs: number): Promise<void> {
    // Held OPENs are not sent: the probe could only time out, and a quiesce that drained heard the agent.
    if (this.#hold.active && !this.#isClosed) return Promise.resolve();
    return probeSession(this, timeoutMs, this.socketPath);
  }

  quiesce(timeoutMs: number): Promise<() => void> {
    return this.#hold.start(timeoutMs);
  }

  close(): void {
    this.#close('closed by the host');
  }

  sendFrame(stream: AgentStream, type: number, payload?: Buffer): boolean {
    if (this.#isClosed || stream.agentEnded) return true;
    if (!stream.openSent) {
      stream.deferred.push({ type, payload });
      return true;
    }
    return this.#outbox.send(stream, type, payload);
  }

  sendCredit(stream: AgentStream, n: number): void {
    if (!this.#isClosed && !stream.agentEnded) this.#outbox.credit(stream, n);
  }

  sendResize(stream: AgentStream): void {
    if (this.#isClosed || stream.agentEnded) return;
    if (!stream.openSent) stream.deferred.push({ type: FrameType.MSG, resize: true });
    else this.#outbox.resize(stream);
  }

  drained(): Promise<void> {
    return this.#outbox.drained();
  }

  requestCancel(stream: AgentStream): void {
    if (stream.agentEnded || stream.cancelSent || this.#isClosed) return;
    if (!stream.openSent) {
      this.#hold.drop(stream);
      this.#streams.delete(stream.id);
      stream.finish({ ok: false, code: 'CANCELLED', message: 'cancelled before its OPEN was sent' }, true);
      return;
    }
    if (this.#hold.active) this.#hold.holdCancel(stream);
    else this.#sendCancel(stream);
  }

  queueChanged(stream: AgentStream): void {
    if (stream.queuedBytes > stream.window) this.#overfull.add(stream);
    else if (this.#overfull.delete(stream) && this.#overfull.size === 0) this.#pump();
  }

  #sendOpen(stream: AgentStream, payload: Buffer = Buffer.from(JSON.stringify(stream.request))): void {
    if (this.#isClosed || stream.end) return;
    this.#outbox.send(stream, FrameType.OPEN, payload);
    stream.openSent = true;
    stream.outstanding = stream.window;
    this.#outbox.credit(stream, stream.window);
    for (const f of stream.deferred.splice(0)) {
      if (f.resize) this.#outbox.resize(stream);
      else this.#outbox.send(stream, f.type, f.payload);
    }
  }

  #sendCancel(stream: AgentStream): void {
    if (stream.agentEnded || stream.cancelSent || this.#isClosed) return;
    stream.cancelSent = true;
    this.#outbox.send(stream, FrameType.CANCEL);
    setTimeout(() => {
      if (stream.agentEnded || this.#streams.get(stream.id) !== stream) return;
      // The agent does not answer: forget the stream, so nothing waits on it (quiesce included);
      // what it still sends within its credit is late, not hostile.
      stream.agentEnded = true;
      this.#streams.delete(stream.id);
      this.#forgotten.add(stream.id, stream.outstanding);
      stream.finish(protocolEnd(stream, `no END within ${this.#cancelGraceMs} ms of CANCEL`), true);
      this.#hold.check();
    }, this.#cancelGraceMs).unref();
  }

  #unanswered(): number {
    let n = 0;
    for (const s of this.#streams.values()) if (!s.agentEnded && ((s.openSent && !s.opened) || s.cancelSent)) n++;
    return n;
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
        this.#heard = Date.now();
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
    if (!stream || !stream.openSent) {
      const bytes = frame.type === FrameType.DATA ? frame.payload.length - 1 : frame.payload.length;
      if (!stream && this.#forgotten.take(frame.stream, bytes, frame.type === FrameType.END)) return;
      return this.#invalidFrame(frame, 'frame for an unknown stream');
    }
    if (stream.end) {
      // Ended here (violation, cancel grace) and waiting for the agent's END: the rest is in flight, not hostile.
      if (frame.type === FrameType.END) this.#forget(stream);
      return;
    }
    const violation = applyStreamFrame(stream, frame);
    if (frame.type === FrameType.END) this.#streams.delete(stream.id);
    if (frame.type === FrameType.OPENED || frame.type === FrameType.END) this.#hold.check();
    if (violation !== undefined) this.#violate(stream, violation);
  }

  #violate(stream: AgentStream, why: string): void {
    this.#invalid++;
    this.#log?.warn({ socket: this.socketPath, stream: stream.id, op: stream.op, why }, 'forky-agent broke the protocol on a stream');
    stream.finish(protocolEnd(stream, why), true);
    if (stream.agentEnded) this.#hold.check();
    else this.requestCancel(stream);
  }

  #forget(stream: AgentStream): void {
    stream.agentEnded = true;
    this.#streams.delete(stream.id);
    this.#hold.drop(stream);
    this.#hold.check();
  }

  #close(reason: string): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#closeReason = reason;
    this.#log?.info({ socket: this.socketPath, reason }, 'forky-agent session closed');
    this.socket.destroy();
    for (const s of this.#streams.values()) s.finish(goneEnd(s, this.#closeReason), false);
    this.#streams.clear();
    this.#overfull.clear();
    this.#outbox.close();
    this.#pings.rejectAll(new ForkyError('UNAVAILABLE', `forky-agent session closed: ${reason}`));
    this.#hold.clear();
    this.#resolveClosed();
  }
}
