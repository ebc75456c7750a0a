import { delay, type Logger } from '@forky/base';

/** Names nats.js gives failures that mean "not now": no server, no leader, no answer yet. */
const TRANSIENT_NAMES = new Set(['TimeoutError', 'NoRespondersError', 'JetStreamNotEnabled', 'RequestError', 'ConnectionError']);

/**
 * A NATS or JetStream failure that a later try may not meet: the connection is moving to another
 * node, or a stream is electing a leader (JetStream answers 503, or nothing, for a few seconds).
 * A closed connection, a refused permission or a bad request is not.
 */
export function isTransientNatsError(e: unknown): boolean {
  const err = e as { name?: string; status?: number; message?: string; cause?: unknown };
  if (!err || typeof err !== 'object') return false;
  if (err.name === 'JetStreamApiError' && err.status === 503) return true;
  if (TRANSIENT_NAMES.has(err.name ?? '')) return true;
  if (/temporarily unavailable|no suitable peers|leader|timeout|no responders/i.test(err.message ?? '')) return true;
  return err.cause !== undefined && err.cause !== e && isTransientNatsError(err.cause);
}

/**
 * Runs an idempotent JetStream operation (a put, a delete, a publish with a message id), again
 * after transient failures, until `timeoutMs`: a cluster losing a node answers again within
 * seconds, and what was being recorded must not be dropped meanwhile.
 */
export async function retryTransient<T>(what: string, fn: () => Promise<T>, opts: { timeoutMs?: number; log?: Logger } = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!isTransientNatsError(e) || Date.now() > deadline) throw e;
      opts.log?.warn({ err: e, attempt }, `${what}: NATS not answering for now; trying again`);
      await delay(Math.min(1000, 100 * 2 ** attempt));
    }
  }
}
