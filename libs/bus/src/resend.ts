import { DeadlineError, ForkyError, delay } from '@forky/base';
import { CLOCK_SKEW_MS, RemoteError, isReadEndpoint, type HostdEndpoint, type SchedEndpoint } from '@forky/contract';
import { PastDeadlineError } from './deadlines.js';

/** How a client sends a request again after its reply was lost. */
export interface RetryOptions {
  /** Tries in all, the first included (default 4). */
  attempts?: number;
  /** The wait before try `attempt + 1` (default 250 ms × attempt). */
  backoffMs?: (attempt: number) => number;
  /** Told before each re-send, e.g. to warn the user. */
  onRetry?: (notice: RetryNotice) => void;
}

export interface RetryNotice {
  endpoint: HostdEndpoint | SchedEndpoint;
  /** The try that failed (1 = the first send). */
  attempt: number;
  /** Re-sends allowed in all. */
  retries: number;
  error: ForkyError;
  /** The idempotency key the request is sent again under; none for a read. */
  key: string | undefined;
}

/** The request's idempotency key, when its body has one. */
export function keyOf(body: unknown): string | undefined {
  const key = typeof body === 'object' && body !== null ? (body as { key?: unknown }).key : undefined;
  return typeof key === 'string' ? key : undefined;
}

/**
 * A request that may be sent twice without doing twice what it asks: a read, or a write under an
 * idempotency key (the receiver answers a repeat with the first reply). Any other is sent once.
 */
export function isResendable(endpoint: HostdEndpoint | SchedEndpoint, body: unknown): boolean {
  return isReadEndpoint(endpoint) || keyOf(body) !== undefined;
}

/**
 * No reply came: nothing serves the subject, the connection failed, or the reply did not arrive
 * in time. An error reply is a reply: a remote TIMEOUT says the operation itself timed out, and
 * asking again would run it again. A request refused before it was sent (its caller's deadline
 * had passed) is not lost either.
 */
export function isLostReply(e: unknown): e is ForkyError {
  if (e instanceof RemoteError || e instanceof PastDeadlineError) return false;
  return e instanceof DeadlineError || (e instanceof ForkyError && e.code === 'UNAVAILABLE');
}

/**
 * One attempt whose deadline is `deadline`. A receiver keeps its caller's deadline (Forky-Deadline)
 * and answers TIMEOUT when it runs out (the scheduler waiting on a job's outcome does); that reply
 * and this side's own timer race for the same instant, and both mean no outcome in time. So a
 * remote TIMEOUT that comes as the deadline runs out (within a tenth of the attempt's time, at
 * most CLOCK_SKEW_MS, of it) is a lost reply here, as the timer would have said; one that comes
 * before that is the operation's own (an exec that timed out in its guest): final.
 */
export async function attemptBy<T>(deadline: number, what: string, send: () => Promise<T>): Promise<T> {
  const started = Date.now();
  const slack = Math.min(CLOCK_SKEW_MS, (deadline - started) / 10);
  try {
    return await send();
  } catch (e) {
    if (e instanceof RemoteError && e.code === 'TIMEOUT' && Date.now() >= deadline - slack) {
      throw new DeadlineError(
        `${what} (the receiver gave up at the deadline: ${e.message})`,
        Math.max(0, Math.round(deadline - started)),
        e,
      );
    }
    throw e;
  }
}

/** Runs `send`, and again after a lost reply while the request is resendable and tries are left. */
export async function sendWithRetries<T>(
  endpoint: HostdEndpoint | SchedEndpoint,
  body: unknown,
  send: () => Promise<T>,
  opts: RetryOptions = {},
): Promise<T> {
  const attempts = Math.max(1, opts.attempts ?? 4);
  const resendable = isResendable(endpoint, body);
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (e) {
      if (!resendable || attempt >= attempts || !isLostReply(e)) throw e;
      opts.onRetry?.({ endpoint, attempt, retries: attempts - 1, error: e, key: keyOf(body) });
      await delay(opts.backoffMs ? opts.backoffMs(attempt) : 250 * attempt);
    }
  }
}
