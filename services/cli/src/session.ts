import type { NatsConnection } from '@nats-io/nats-core';
import type { RetryNotice } from '@forky/bus';
import type { AppMount, StreamOpenEndpoint } from '@forky/contract';
import { transport, type Calls } from '@forky/sdk';
import { uploadApps } from './apps.js';
import { connectTo, resolveConnection } from './local-cluster.js';
import { rawRequest } from './raw-request.js';
import type { CliStream } from './streams-io.js';

/** What a command needs of the cluster (the SDK's calls, and a few of the CLI's own); a test passes its own. */
export interface Session extends Calls {
  /** Puts `--app DIR[:/mnt]` directories in the object store, as the layers a request names. */
  uploadApps(specs: readonly string[]): Promise<AppMount[]>;
  /** `forky req`: one JSON request to any subject, sent once. */
  raw(subject: string, body: unknown): Promise<unknown>;
  /** Opens a stream (libs/contract/STREAMS.md) through the scheduler; its bytes go host to us directly. */
  stream(endpoint: StreamOpenEndpoint, body: unknown, opts?: { signal?: AbortSignal }): Promise<CliStream>;
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
 * A session with the cluster the options name, on the SDK's transport: it sends a read or a keyed
 * request again when no scheduler answers or the reply is lost (a scheduler dying mid-request
 * costs a retry, not a VM); any other request, and any error reply, is final.
 */
export async function openSession(o: SessionOptions): Promise<Session> {
  const nc: NatsConnection = await connectTo(await resolveConnection(o.server, o.data), 'forky-cli');
  const t = transport(nc, o.requestTimeoutMs, warnRetry);
  return {
    call: t.call,
    stream: t.stream,
    uploadApps: (specs) => uploadApps(nc, specs),
    raw: (subject, body) => rawRequest(nc, subject, body, o.requestTimeoutMs),
    close: () => nc.close(),
  };
}
