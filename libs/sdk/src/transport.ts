import type { NatsConnection } from '@nats-io/nats-core';
import { SchedulerClient, openStream, type ClientStream, type RetryNotice, type StreamChunk } from '@forky/bus';
import { subjects, type SchedEndpoint, type SchedReplyOf, type SchedRequestOf, type StreamOpenEndpoint } from '@forky/contract';

/** Per-call options of every long SDK call. */
export interface CallOptions {
  /** Gives the call up (a stream is cancelled, so its guest process is killed). */
  signal?: AbortSignal;
  /** The call's deadline (default: the client's). */
  timeoutMs?: number;
}

/** What processes and files read of a stream: @forky/bus's ClientStream, or a test's own. */
export interface StreamLike extends AsyncIterable<StreamChunk> {
  readonly pid?: number;
  write(bytes: Uint8Array): Promise<void>;
  closeInput(): Promise<void>;
  cancel(): void;
  close(): void;
  /** A PTY's new size (an `exec.start` with `pty`; on any other stream the host ends it with PROTOCOL). */
  resize?(rows: number, cols: number): void;
}

/** Typed scheduler calls and streams: all a process or a VM's files need (the CLI's session is one). */
export interface Calls {
  call<E extends SchedEndpoint>(endpoint: E, body: SchedRequestOf<E>, opts?: CallOptions): Promise<SchedReplyOf<E>>;
  stream(endpoint: StreamOpenEndpoint, body: unknown, opts?: CallOptions): Promise<StreamLike>;
}

/** What the SDK's objects use of the cluster: its calls and streams, and the connection (events). */
export interface Transport extends Calls {
  readonly nc: NatsConnection;
  stream(endpoint: StreamOpenEndpoint, body: unknown, opts?: CallOptions): Promise<ClientStream>;
}

/**
 * The scheduler client with retries: a read, or a write carrying an idempotency key (every write
 * the SDK sends has one), is sent again when its reply is lost; anything else is sent once.
 */
export function transport(nc: NatsConnection, timeoutMs: number, onRetry?: (n: RetryNotice) => void): Transport {
  const client = new SchedulerClient(nc, { timeoutMs, retry: { attempts: 4, ...(onRetry ? { onRetry } : {}) } });
  return {
    nc,
    call: (endpoint, body, opts = {}) =>
      abortable(opts.signal, () => client.call(endpoint, body, opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {})),
    stream: async (endpoint, body, opts = {}) => {
      const opening = openStream(nc, subjects.sched(endpoint), body, { timeoutMs: opts.timeoutMs ?? timeoutMs });
      try {
        return await abortable(opts.signal, () => opening);
      } catch (e) {
        // Given up while it opened: an open that still succeeds is cancelled, not left to time out.
        opening.then(
          (st) => st.cancel(),
          () => undefined,
        );
        throw e;
      }
    },
  };
}

/**
 * Runs `fn` unless `signal` is aborted, and stops waiting for it when it is (with the signal's
 * reason, as fetch does). The request itself may still complete on the cluster: writes carry
 * idempotency keys, so asking again does not do the work twice.
 */
export async function abortable<T>(signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  if (!signal) return fn();
  signal.throwIfAborted();
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([fn(), aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
