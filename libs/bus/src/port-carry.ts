import type net from 'node:net';
import { ForkyError, asForkyError, withDeadline } from '@forky/base';
import type { StreamChunk, StreamEnd } from './streams.js';

/** How long a finished connection waits for its peer to close its half before it is dropped. */
const FINISH_DEADLINE_MS = 5_000;

/** What carrying needs of a stream (ClientStream has it; a test may pass its own). */
export interface CarriedStream extends AsyncIterable<StreamChunk> {
  write(bytes: Uint8Array): Promise<void>;
  closeInput(): Promise<void>;
  cancel(): void;
  close(): void;
}

export interface CarryOptions {
  /** Bytes already read from the socket (an HTTP request head), sent to the guest first. */
  head?: Uint8Array;
  /** Aborted: the stream is cancelled; its end is then ours and is not reported as a failure. */
  signal?: AbortSignal;
  /** How long our finished half waits for the peer's (default 5 s). */
  finishMs?: number;
  /**
   * What the peer is sent when the stream fails before the guest sent a byte (the gateway's `502`);
   * without it, or once bytes went out, the socket is reset: a half-sent answer must not look whole.
   */
  failReply?: (reason: string) => Uint8Array;
  /** Told of a failure before the socket closes: what the caller says of it comes before the peer sees the close. */
  onFailure?: (end: CarryEnd & { ok: false }) => void;
}

/**
 * How a carried connection ended. `ok: false` is a failure we did not cause (the guest port refused,
 * the NATS connection was lost): `reason` is `CODE: message`, `error` what was thrown, if something was.
 */
export type CarryEnd = { ok: true } | { ok: false; reason: string; error?: unknown };

/**
 * Carries one accepted TCP socket over a `port.open` stream (STREAMS.md, Ports), both ways, until the
 * stream's end; closes the stream and the socket. Back-pressure both ways: the socket is paused while
 * the host has granted no input credit, and the stream's credit goes back only as the socket drains,
 * so a connection holds at most its window in memory and a slow side stalls only its own connection.
 * Half-close both ways: the socket's FIN goes as `eof`, the guest's `eof` as our FIN (the socket must
 * be made with `allowHalfOpen`). The socket should be paused; it is resumed here.
 */
export async function carrySocket(sock: net.Socket, st: CarriedStream, opts: CarryOptions = {}): Promise<CarryEnd> {
  let ours = false;
  const stop = (): void => {
    if (ours) return;
    ours = true;
    st.cancel();
  };
  const halves = { in: false, out: false, sent: 0 };
  // An error (a reset by the peer) is followed by close, which cancels the stream.
  sock.on('error', () => undefined);
  if (opts.signal?.aborted || sock.destroyed) stop();
  opts.signal?.addEventListener('abort', stop, { once: true });
  sock.on('close', (hadError) => {
    // The local side is gone before the end (a reset, a destroy): the guest's socket goes too.
    // Both halves closed cleanly: the end is on its way, the guest must get its EOF first.
    if (!hadError && halves.in && halves.out) return;
    stop();
  });
  if (opts.head && opts.head.length > 0) void st.write(opts.head).catch(() => undefined);
  pumpIn(sock, st, halves);
  try {
    const end = await pumpOut(sock, st, halves);
    if (!end.ok && !ours) {
      const reason = `${end.code}: ${end.message}`;
      opts.onFailure?.({ ok: false, reason });
      if (halves.sent === 0 && opts.failReply && !sock.destroyed) {
        sock.write(opts.failReply(reason));
        await finish(sock, opts.finishMs ?? FINISH_DEADLINE_MS);
      } else sock.resetAndDestroy();
      return { ok: false, reason };
    }
    await finish(sock, opts.finishMs ?? FINISH_DEADLINE_MS);
    return { ok: true };
  } catch (e) {
    // The NATS connection lost, the host silent: the connection cannot go on.
    if (ours) {
      sock.destroy();
      return { ok: true };
    }
    const fe = asForkyError(e);
    const failed = { ok: false as const, reason: `${fe.code}: ${fe.message}`, error: e };
    opts.onFailure?.(failed);
    sock.destroy();
    return failed;
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    st.close();
  }
}

/** Ends our half and lets what is buffered flush; a peer that keeps its half open past the deadline is dropped. */
async function finish(sock: net.Socket, ms: number): Promise<void> {
  if (sock.destroyed) return;
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  sock.end();
  await withDeadline(closed, ms, 'the carried connection closing').catch(() => sock.destroy());
}

/** Socket to stream: one chunk at a time, the socket paused until the host's credit took it; its FIN as `eof`. */
function pumpIn(sock: net.Socket, st: CarriedStream, halves: { in: boolean }): void {
  sock.on('data', (b: Buffer) => {
    sock.pause();
    st.write(b).then(
      () => sock.resume(),
      () => undefined, // the stream ended or failed: its end (or error) closes the socket
    );
  });
  sock.on('end', () => {
    halves.in = true;
    void st.closeInput().catch(() => undefined);
  });
  sock.resume();
}

/** Stream to socket: the next chunk is taken (and its credit given back) only once the socket drained the last. */
async function pumpOut(sock: net.Socket, st: CarriedStream, halves: { out: boolean; sent: number }): Promise<StreamEnd> {
  for await (const ch of st) {
    if (ch.kind === 'end') return ch.end;
    if (ch.kind === 'eof') {
      halves.out = true;
      sock.end();
    } else if (ch.kind === 'data' && !sock.destroyed) {
      halves.sent += ch.bytes.length;
      await drained(sock, ch.bytes);
    }
  }
  throw new ForkyError('UNAVAILABLE', 'the stream ended without its end message');
}

/** Writes and, when the socket's buffer is full, waits for it to drain (or close: then nothing more is written). */
function drained(sock: net.Socket, bytes: Uint8Array): Promise<void> {
  if (sock.write(bytes) || sock.destroyed) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = (): void => {
      sock.off('drain', done);
      sock.off('close', done);
      resolve();
    };
    sock.once('drain', done);
    sock.once('close', done);
  });
}
