import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, delay, type Logger } from '@forky/base';
import { HostdClient, PastDeadlineError, refuseIfLate, type JobDelivery, type JobOutcome, type RequestOptions } from '@forky/bus';
import { CLOCK_SKEW_MS, type HostdEndpoint, type ReplyOf, type RequestOf } from '@forky/contract';
import type { Idempotency } from './idempotency.js';
import { MISSED_BEATS } from './placement.js';

/**
 * A call to a host has as long to start there as the host may go without reporting before it is
 * seen down (MISSED_BEATS beats), so giving it up on liveness takes hardly longer than seeing the
 * host down did (CLOCK_SKEW_MS more); never under 2 s, so that a live host busy for a moment does
 * not refuse it.
 */
const MIN_START_WINDOW_MS = 2_000;

export function startWindowMs(intervalMs: number | undefined): number {
  return Math.max(MISSED_BEATS * (intervalMs ?? 2_000), MIN_START_WINDOW_MS);
}

/**
 * Whether a call whose last request had `startBy` may still be started by its host, at `now`
 * on our clock: the host's may be behind by up to CLOCK_SKEW_MS.
 */
export function mayStillStart(startBy: number, now = Date.now()): boolean {
  return now <= startBy + CLOCK_SKEW_MS;
}

/**
 * The client of one host call (Hosts.onHost). Each request it sends carries a start-by (its
 * send time + the window), and the latest is kept: the scheduler gives the call up on liveness
 * only past it, when the host, however late it reads the request, refuses it. Once the call is
 * given up, nothing more is sent: the next step of it (a fork after a fetch) would be work done
 * after the caller was told it failed.
 */
export class StartByClient extends HostdClient {
  #latest = 0;

  constructor(
    nc: NatsConnection,
    hostId: string,
    defaults: RequestOptions,
    private readonly windowMs: number,
    /** Set once the call is given up (an AbortSignal would do; a flag is all that is read). */
    private readonly givenUp: { readonly aborted: boolean },
  ) {
    super(nc, hostId, defaults);
  }

  /** The start-by of the last request sent (epoch ms; 0 before any). */
  get latestStartBy(): number {
    return this.#latest;
  }

  override async call<E extends HostdEndpoint>(endpoint: E, body: RequestOf<E>, opts: RequestOptions = {}): Promise<ReplyOf<E>> {
    if (this.givenUp.aborted)
      throw new ForkyError('UNAVAILABLE', `host ${this.hostId}: ${endpoint} not sent: the call it is part of was given up`);
    this.#latest = Date.now() + this.windowMs;
    return super.call(endpoint, body, { startBy: this.#latest, ...opts });
  }
}

/** Why a host call is given up: the host restarted, or stopped reporting and can no longer start what it was sent. */
export function hostGone(host: string, lastSeen: number, down: boolean, startBy: number, asked?: string): ForkyError {
  const why = !down
    ? 'restarted; the request in flight to it was lost'
    : `stopped reporting (last seen ${new Date(lastSeen).toISOString()})${startBy > 0 ? `; it does not start the request after ${new Date(startBy).toISOString()}` : ''}${asked ? `; asked directly: ${asked}` : ''}`;
  return new ForkyError('UNAVAILABLE', `host ${host} ${why}`, { details: { host } });
}

/**
 * Why a delivered job must not run, if so. Past its last run: that run's scheduler stopped
 * without a word. A first delivery past its client's deadline: nobody waits for it (a job that
 * has started is the client's accepted work, and its later deliveries finish it under its key).
 */
export function jobRefusal(d: JobDelivery, now = Date.now()): ForkyError | undefined {
  if (d.pastLast) {
    return new ForkyError(
      'UNAVAILABLE',
      `job ${d.job.key} was delivered ${d.attempt - 1} time(s) and no run of it finished (the scheduler running it stopped); it is not run again. What a host had started of it may still finish: ask again with the same key to run it anew and get that too`,
    );
  }
  if (d.attempt !== 1 || d.deadline === undefined) return undefined;
  try {
    refuseIfLate({ deadline: d.deadline }, now);
    return undefined;
  } catch (e) {
    return e as PastDeadlineError;
  }
}

/**
 * Records a refused job as failed under its key, the way a run would (the claim makes a run
 * that finished meanwhile keep its reply), and ends it. `waitMs` bounds the wait for a run that
 * still holds the key; a refusal that cannot be recorded still ends the job, which must not run.
 * Past its last run, it first waits out `startWindowMs` (the longest start window of any host,
 * plus CLOCK_SKEW_MS): a host still holding a call of the dead run then refuses it, instead of
 * doing work the record says failed.
 */
export async function failUnrun(
  idem: Idempotency,
  d: JobDelivery,
  refusal: ForkyError,
  opts: { waitMs: number; startWindowMs: number },
  log: Logger,
): Promise<JobOutcome> {
  if (d.pastLast) await delay(opts.startWindowMs + CLOCK_SKEW_MS);
  try {
    await idem.run(d.job.key, d.job.hash, opts.waitMs, () => Promise.reject(refusal));
    log.info('job refused, but a run of it had finished: its reply stands');
    return { ack: true };
  } catch (e) {
    if (e !== refusal) {
      log.error({ err: e, refusal: refusal.message }, 'job refused; the refusal could not be recorded');
      return { ack: false, drop: refusal.message };
    }
    // On the record, like any failure: the job itself is finished.
    log.warn({ err: refusal }, 'job failed on the record, not run');
    return { ack: true };
  }
}
