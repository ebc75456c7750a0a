import type net from 'node:net';
import { encodeFrame, FrameType, HEADER_BYTES } from './frame.js';
import type { AgentStream } from './stream.js';

/** Past this many bytes of frames waiting to be written, a session takes no new OPEN or PING. */
export const MAX_OUTBOX_BYTES = 4 * 1024 * 1024;

interface Entry {
  stream: AgentStream | undefined;
  type: number;
  payload?: Buffer | undefined;
  /** A CREDIT's amount, added to while it waits. */
  credit?: number;
  /** A resize MSG: its size is the stream's latest, read when it is written. */
  resize?: boolean;
  bytes: number;
}

/**
 * The frames a session sends the agent, written in order while the socket takes them and queued
 * while it is backed up (an agent that does not read its port). Why: socket.write buffers without
 * bound. A stream's queued CREDITs merge and its resizes coalesce, and it sends at most one OPEN,
 * EOF and CANCEL and (its writer waiting for drained()) one DATA at a time, so the queue grows
 * only with OPENs and PINGs, which are refused past MAX_OUTBOX_BYTES.
 */
export class Outbox {
  #queue: Entry[] = [];
  #bytes = 0;
  #credits = new Map<AgentStream, Entry>();
  #drainWaiters: Array<() => void> = [];
  #closed = false;

  constructor(private readonly socket: net.Socket) {
    socket.on('drain', () => this.#flush());
  }

  /** Bytes of frames queued (not yet handed to the socket). */
  get queuedBytes(): number {
    return this.#bytes;
  }

  get full(): boolean {
    return this.#bytes > MAX_OUTBOX_BYTES;
  }

  get #backedUp(): boolean {
    return this.#queue.length > 0 || this.socket.writableNeedDrain;
  }

  /** Writes a frame now or queues it; false when the socket is backed up (a DATA writer then awaits drained()). */
  send(stream: AgentStream | undefined, type: number, payload?: Buffer): boolean {
    if (this.#closed) return true;
    if (!this.#backedUp) return this.socket.write(encodeFrame(type, stream?.id ?? 0, payload));
    this.#push({ stream, type, payload, bytes: HEADER_BYTES + (payload?.length ?? 0) });
    return false;
  }

  credit(stream: AgentStream, n: number): void {
    if (this.#closed) return;
    if (!this.#backedUp) {
      this.socket.write(encodeFrame(FrameType.CREDIT, stream.id, u32(n)));
      return;
    }
    const queued = this.#credits.get(stream);
    if (queued) queued.credit = (queued.credit ?? 0) + n;
    else {
      const e: Entry = { stream, type: FrameType.CREDIT, credit: n, bytes: HEADER_BYTES + 4 };
      this.#credits.set(stream, e);
      this.#push(e);
    }
  }

  /** A resize MSG with the stream's size as it is when written (the stream asks once per size change it has not sent). */
  resize(stream: AgentStream): void {
    if (this.#closed) return;
    if (!this.#backedUp) this.socket.write(encodeFrame(FrameType.MSG, stream.id, stream.takeResize()));
    else this.#push({ stream, type: FrameType.MSG, resize: true, bytes: HEADER_BYTES + 48 });
  }

  /** Resolves once every queued frame is handed to the socket and it takes writes again (or the session closed). */
  drained(): Promise<void> {
    if (this.#closed || !this.#backedUp) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  close(): void {
    this.#closed = true;
    this.#queue = [];
    this.#credits.clear();
    this.#bytes = 0;
    this.#wake();
  }

  #push(e: Entry): void {
    this.#queue.push(e);
    this.#bytes += e.bytes;
  }

  #flush(): void {
    let i = 0;
    for (; i < this.#queue.length && !this.socket.writableNeedDrain && !this.#closed; i++) {
      const e = this.#queue[i] as Entry;
      this.#bytes -= e.bytes;
      if (e.credit !== undefined) this.#credits.delete(e.stream as AgentStream);
      // The agent forgot the stream: what is left for it would only be dropped there.
      if (e.stream?.agentEnded && e.type !== FrameType.OPEN) continue;
      const payload = e.credit !== undefined ? u32(e.credit) : e.resize ? e.stream?.takeResize() : e.payload;
      this.socket.write(encodeFrame(e.type, e.stream?.id ?? 0, payload));
    }
    this.#queue.splice(0, i);
    if (!this.#backedUp) this.#wake();
  }

  #wake(): void {
    for (const w of this.#drainWaiters.splice(0)) w();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
