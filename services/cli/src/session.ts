import type { NatsConnection } from '@nats-io/nats-core';
import { SchedulerClient, openStream, type RetryNotice } from '@forky/bus';
import {
  subjects,
  type AppMount,
  type SchedEndpoint,
  type SchedReplyOf,
  type SchedRequestOf,
  type StreamOpenEndpoint,
} from '@forky/contract';
import { uploadApps } from './apps.js';
import { connectTo, resolveConnection } from './local-cluster.js';
import { rawRequest } from './raw-request.js';
import type { CliStream } from './streams-io.js';

/** What a command needs of the cluster; a test passes its own. */
export interface Session {
  call<E extends SchedEndpoint>(endpoint: E, body: SchedRequestOf<E>): Promise<SchedReplyOf<E>>;
  /** Puts `--app DIR[:/mnt]` directories in the object store, as the layers a request names. */
  uploadApps(specs: readonly string[]): Promise<AppMount[]>;
  /** `forky req`: one JSON request to any subject, sent once. */
  raw(subject: string, body: unknown): Promise<unknown>;
  /** Opens a stream (libs/contract/STREAMS.md) through the scheduler; its bytes go host to us directly. */
  stream(endpoint: StreamOpenEndpoint, body: unknown): Promise<CliStream>;
  close(): Promise<void>;
}

export interface SessionOptions {
  server: string | undefined;
  data: string;
  /** The deadline of one request attempt. */
  requestTimeoutMs: number;
}

/** A warning, not progress: shown on stderr even when it is not a terminal. */
function warnRetry(n: RetryNotice): void {
  const how = n.key ? `with the same idempotency key ${n.key}` : '(a read)';
  process.stderr.write(`forky: ${n.endpoint}: ${n.error.message}; retrying ${how} (${n.attempt}/${n.retries})\n`);
}

/**
 * A session with the cluster the options name. Its client sends a read or a keyed request again
 * when no scheduler answers or the reply is lost (a scheduler dying mid-request costs a retry,
 * not a VM); any other request, and any error reply, is final.
 */
export async function openSession(o: SessionOptions): Promise<Session> {
  const nc: NatsConnection = await connectTo(await resolveConnection(o.server, o.data), 'forky-cli');
  const client = new SchedulerClient(nc, { timeoutMs: o.requestTimeoutMs, retry: { attempts: 4, onRetry: warnRetry } });
  return {
    call: (endpoint, body) => client.call(endpoint, body),
    uploadApps: (specs) => uploadApps(nc, specs),
    raw: (subject, body) => rawRequest(nc, subject, body, o.requestTimeoutMs),
    stream: (endpoint, body) => openStream(nc, subjects.sched(endpoint), body, { timeoutMs: o.requestTimeoutMs }),
    close: () => nc.close(),
  };
}
