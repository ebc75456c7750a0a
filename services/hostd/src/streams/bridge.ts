import type { AgentEnd, GuestEvent } from '@forky/agent';
import { safeHeaders } from '@forky/bus';
import { ResizeBody, STREAM_CHUNK_MAX, STREAM_HEADERS, boundedText, subjects, type OutKind, type StreamEndBody } from '@forky/contract';
import { ResizePacer, STREAM_START_IDLE_MS, endBody, json, safeJson } from './helpers.js';
import type { BridgeCounters, BridgeOptions } from './bridge-types.js';

export type { BridgeCounters, BridgeOptions };

/**
 * One stream between a client on NATS and a guest stream. Output is pulled from the guest only
 * within the client's credit, so a slow client stops the guest, and hostd holds at most one
 * chunk of it beyond what the session buffers (its window, the client's). Input is taken within
 * the credit this side granted, in `Forky-Seq` order, and written to the guest one at a time.
 */
export class Bridge {
  readonly counters: BridgeCounters = { held: 0, maxHeld: 0, sent: 0, inHeld: 0, maxInHeld: 0 };
  readonly done: Promise<AgentEnd | StreamEndBody>;
  readonly #o: BridgeOptions;
  readonly #out: string;
  #seq = 0;
  #credit = 0;
  #started = false;
  #cancelled: 'client' | 'idle' | 'host' | undefined;
  #protocol: string | undefined;
  #lastHeard = Date.now();
  #wake: (() => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #inLast = 0;
  #inAllowed = 0;
  #inEof = false;
  #inQueue: Array<Uint8Array | 'eof'> = [];
  #inPumping = false;
  #finished = false;
  #activityAt = -Infinity;
  /** Wakes the one wait for a guest event, if any: a fresh promise per wait, so none outlives it. */
  #onCancel: (() => void) | undefined;
  readonly #resizes: ResizePacer;

  constructor(o: BridgeOptions) {
    this.#o = o;
    this.#out = subjects.streamOut(o.hostId, o.sid);
    this.#resizes = new ResizePacer((rows, cols) => o.stream.resize(rows, cols));
    this.done = this.#pump();
    this.#timer = setInterval(() => this.#tick(), Math.max(10, Math.min(o.keepaliveMs, o.idleMs / 3)));
  }

  get sid(): string {
    return this.#o.sid;
  }

  get vmId(): string {
    return this.#o.vmId;
  }

  get ended(): boolean {
    return this.#finished;
  }

  /** A keyed repeat: its client is alive, though it has not started the stream yet. */
  touch(): void {
    this.#lastHeard = Date.now();
  }

  /** `credit` from the client: more bytes it takes (activity of its VM); also its keepalive. */
  onCredit(bytes: number): void {
    this.#lastHeard = Date.now();
    if (bytes > 0) this.#activity();
    this.#credit += bytes;
    if (!this.#started) {
      this.#started = true;
      // Only now does the client listen on `out`: its input credit goes first.
      if (this.#o.takesInput) this.#grantIn(this.#o.inWindow);
    }
    this.#wakeUp();
  }

  /** A message on `in`: data, eof or resize, numbered by the client. */
  onIn(seq: number, kind: string | undefined, data: Uint8Array): void {
    this.#lastHeard = Date.now();
    if (this.#finished || this.#protocol) return;
    if (!Number.isSafeInteger(seq) || seq < 1) return this.#violation('an input message without a Forky-Seq');
    if (seq <= this.#inLast) return; // a repeat
    if (seq > this.#inLast + 1) return this.#violation(`input message ${seq} came after ${this.#inLast}`);
    this.#inLast = seq;
    // The client's input (keys, a resize, its eof): activity, which wakes a VM its idle rule paused.
    this.#activity();
    if (kind === 'resize') {
      if (!this.#o.pty) return this.#violation('a resize on a stream without a terminal');
      const r = safeJson(data, ResizeBody);
      if (!r) return this.#violation('a resize is not {"rows","cols"}');
      this.#resizes.push(r);
      return;
    }
    if (!this.#o.takesInput) return this.#violation('this stream takes no input');
    if (this.#inEof) return this.#violation('input after eof');
    if (kind === 'eof') {
      this.#inEof = true;
      this.#inQueue.push('eof');
    } else if (kind === 'data') {
      if (data.length > this.#inAllowed || data.length > STREAM_CHUNK_MAX) return this.#violation('input beyond the credit granted');
      this.#inAllowed -= data.length;
      this.#inQueue.push(data);
      this.counters.inHeld += data.length;
      this.counters.maxInHeld = Math.max(this.counters.maxInHeld, this.counters.inHeld);
    } else return this.#violation(`an unknown input kind ${boundedText(kind ?? '(none)', 20)}`);
    void this.#pumpIn();
  }

  /** Stops the stream's work (the client's cancel, an idle client, the VM going); the end still goes out. */
  cancel(why: 'client' | 'idle' | 'host' = 'client'): void {
    if (why === 'client') this.#lastHeard = Date.now();
    if (this.#cancelled || this.#finished) return;
    this.#cancelled = why;
    this.#o.stream.cancel();
    this.#resizes.stop();
    this.#onCancel?.();
    this.#wakeUp();
  }

  /** Bytes moved (output, input, credit): the VM is in use. Said at most once a second, so a busy stream costs nothing. */
  #activity(): void {
    const now = Date.now();
    if (now - this.#activityAt < 1000) return;
    this.#activityAt = now;
    this.#o.onActivity?.(this.#o.vmId);
  }

  #violation(what: string): void {
    this.#protocol ??= what;
    this.cancel('host');
  }

  #tick(): void {
    if (this.#finished) return;
    if (this.#started) this.#publish('credit', json({ bytes: 0 }));
    const idleMs = this.#started ? this.#o.idleMs : (this.#o.startIdleMs ?? STREAM_START_IDLE_MS);
    if (Date.now() - this.#lastHeard > idleMs) {
      this.#o.log.info({ sid: this.#o.sid, vm: this.#o.vmId }, 'stream client silent: cancelled');
      this.cancel('idle');
    }
  }

  async #pump(): Promise<AgentEnd | StreamEndBody> {
    let end: AgentEnd;
    try {
      await this.#until(() => this.#started || !!this.#cancelled);
      end = await this.#forward();
    } catch (e) {
      this.#o.log.warn({ err: e, sid: this.#o.sid }, 'stream failed');
      end = { ok: false, code: 'GONE', message: 'the guest stream failed' };
    }
    const body = endBody(end, this.#protocol, !!this.#cancelled, this.#o.sessionEnded?.() === true);
    this.#publish('end', json(body));
    this.#finished = true;
    clearInterval(this.#timer);
    this.#resizes.stop();
    this.#wakeUp();
    return body;
  }

  /** Guest events to `out` until the guest's END (or, once cancelled, the grace runs out). */
  async #forward(): Promise<AgentEnd> {
    let next = this.#o.first;
    for (;;) {
      // Nothing is taken from the guest while the client has no credit: the guest waits, not hostd.
      if (!next) await this.#until(() => this.#credit > 0 || !!this.#cancelled);
      const r = await this.#next(next ?? this.#o.events.next());
      next = undefined;
      if (r === 'abandoned') return { ok: false, code: 'GONE', message: 'the guest did not end the cancelled stream' };
      if (r.done) return this.#o.stream.ended;
      const ev = r.value;
      if (ev.kind === 'end') return ev.end;
      // A port connection's half-close: after its bytes, and free (it is no bytes).
      if (ev.kind === 'eof' && this.#o.eofOut && ev.channel === 1 && !this.#cancelled) this.#publish('eof', new Uint8Array(0));
      if (ev.kind === 'msg') await this.#sendEvent(json(ev.msg));
      if (ev.kind === 'data') this.#activity();
      if (ev.kind === 'data') await this.#sendBytes(this.#o.bytes === 'file' ? 'data' : ev.channel === 2 ? 'stderr' : 'stdout', ev.bytes);
    }
  }

  /** The next event; once cancelled, only within the grace. */
  async #next(p: Promise<IteratorResult<GuestEvent>>): Promise<IteratorResult<GuestEvent> | 'abandoned'> {
    if (!this.#cancelled) {
      const cancelled = new Promise<'cancelled'>((resolve) => (this.#onCancel = () => resolve('cancelled')));
      try {
        const r = await Promise.race([p, cancelled]);
        if (r !== 'cancelled') return r;
      } finally {
        // Dropped, `cancelled` and the race's reaction on it (holding the event) go with it.
        this.#onCancel = undefined;
      }
    }
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'abandoned'>((resolve) => (timer = setTimeout(() => resolve('abandoned'), this.#o.cancelGraceMs)));
    try {
      return await Promise.race([p, grace]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** An event's body counts against credit (or a guest's MSG flood flows unbounded); whole, once credit covers it. */
  async #sendEvent(body: Uint8Array): Promise<void> {
    // More than a window's least could wait for ever (an agent frame is 64 KiB: a sound guest sends none).
    if (body.length > STREAM_CHUNK_MAX) return this.#violation('the guest sent an event over 64 KiB');
    await this.#until(() => this.#credit >= body.length || !!this.#cancelled);
    if (this.#cancelled) return;
    this.#publish('event', body);
    this.#credit -= body.length;
    this.counters.sent += body.length;
  }

  async #sendBytes(kind: OutKind, bytes: Uint8Array): Promise<void> {
    this.counters.held += bytes.length;
    this.counters.maxHeld = Math.max(this.counters.maxHeld, this.counters.held);
    let at = 0;
    while (at < bytes.length) {
      if (this.#cancelled) break; // what is left goes nowhere: the stream is stopping
      if (this.#credit <= 0) {
        await this.#until(() => this.#credit > 0 || !!this.#cancelled);
        continue;
      }
      const n = Math.min(this.#credit, STREAM_CHUNK_MAX, bytes.length - at);
      this.#publish(kind, bytes.subarray(at, at + n));
      this.#credit -= n;
      this.counters.sent += n;
      this.counters.held -= n;
      at += n;
    }
    this.counters.held -= bytes.length - at;
  }

  async #pumpIn(): Promise<void> {
    if (this.#inPumping) return;
    this.#inPumping = true;
    try {
      for (let item = this.#inQueue.shift(); item !== undefined; item = this.#inQueue.shift()) {
        if (item === 'eof') {
          this.#o.stream.closeInput();
          continue;
        }
        await this.#o.stream.write(item);
        this.counters.inHeld -= item.length;
        if (!this.#finished) this.#grantIn(item.length);
      }
    } catch {
      // The guest stream ended under the write: its end says why.
      this.#inQueue = [];
    } finally {
      this.#inPumping = false;
    }
  }

  #grantIn(bytes: number): void {
    this.#inAllowed += bytes;
    this.#publish('credit', json({ bytes }));
  }

  #publish(kind: OutKind, body: Uint8Array): void {
    try {
      this.#o.nc.publish(this.#out, body, { headers: safeHeaders({ [STREAM_HEADERS.seq]: ++this.#seq, [STREAM_HEADERS.kind]: kind }) });
    } catch (err) {
      // A closed connection: the client will find the stream silent and give up on it.
      this.#o.log.warn({ err, sid: this.#o.sid }, 'stream publish failed');
    }
  }

  /** Waits until `cond` holds; every wake-up (credit, cancel) checks again. Cancel bounds it: the idle timer. */
  async #until(cond: () => boolean): Promise<void> {
    while (!cond()) await new Promise<void>((resolve) => (this.#wake = resolve));
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}
