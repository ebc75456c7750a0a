import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, asForkyError, newId, type ErrorCode, type Logger } from '@forky/base';
import { callerDeadline, type JobDelivery, type JobOutcome, type JobQueue } from '@forky/bus';
import { BUCKETS, CLOCK_SKEW_MS, schedContract, type Job, type JobEndpoint, type SchedParsedRequestOf } from '@forky/contract';
import { Idempotency, keyReused, requestHash, underWay } from './idempotency.js';
import { failUnrun, jobRefusal } from './deadlines.js';

/** Failures a later attempt may not meet: a host down, or not answering in time. */
export const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['UNAVAILABLE', 'TIMEOUT']);

/**
 * A failure the job is tried again for at its next delivery (unless this one is its last): a host
 * down or not answering, but not a timeout that is the request's own fault (`final`: a template's
 * ready command never succeeding).
 */
export const triedAgain = (e: ForkyError): boolean => TRANSIENT.has(e.code) && e.details?.['final'] !== true;

/** What a job of each endpoint does, under its key; `last` says whether it is the job's last delivery. */
export type Perform = { [E in JobEndpoint]: (req: SchedParsedRequestOf<E>, key: string, last: boolean) => Promise<unknown> };

export interface JobsOptions {
  /** How long a forwarded request may take on its host; also the longest wait for a job's outcome. */
  hostTimeoutMs: number;
  leaseMs: number;
  /** How long the jobs stream waits for a sign of life from a job's worker before delivering it again. */
  ackWaitMs: number;
  /** How long a call already sent to a host may still start there (see failUnrun). */
  startWindowMs: () => number;
}

/** The keys hostd gets for keyless requests: unique (a random prefix per process, then a count) without a random draw each. */
const KEYLESS = newId('req', 12);
let keyless = 0;

/** How long the jobs stream drops a repeat of a job's message id (JobQueue.open's duplicate_window). */
const DEDUPE_WINDOW_MS = 120_000;

/**
 * Requests that change the cluster. A keyed one is a job on the jobs stream, run once per key
 * by whichever scheduler takes it, its outcome kept in the requests bucket; a keyless one runs
 * at once, here.
 *
 * The job is the request's claim: it is published on its key's subject expecting none there, so
 * two jobs of one key are never queued at once, and on the normal path the job and the outcome
 * are the only writes. A run claims the key in the bucket only when another could be near (see
 * #unclaimed) or once it lasts (Idempotency.runUnclaimed).
 */
export class Jobs {
  readonly #idem: Idempotency;
  /** A first delivery within this of its submission may run unclaimed (see #unclaimed). */
  readonly #freshMs: number;

  constructor(
    requests: KV,
    nc: NatsConnection,
    /** Keyed requests are queued on it, so they outlive the scheduler that took them. */
    private readonly queue: Pick<JobQueue, 'submitKeyed'>,
    private readonly perform: Perform,
    private readonly opts: JobsOptions,
    private readonly log: Logger,
  ) {
    // The owner names the process, so an operator (or a test) can tell whose lease a request holds.
    this.#idem = new Idempotency(requests, `${newId('sch', 6)}-pid${process.pid}`, opts.leaseMs, log, {
      watch: true,
      leader: { nc, bucket: BUCKETS.requests },
    });
    this.#freshMs = Math.max(0, DEDUPE_WINDOW_MS - opts.ackWaitMs - opts.leaseMs / 3 - CLOCK_SKEW_MS - 10_000);
  }

  /** Stops following the requests bucket. */
  stop(): void {
    this.#idem.stop();
  }

  /**
   * A keyless request runs here and now: it cannot be asked for again, so nothing of it is
   * recorded (a bad or hostile request leaves nothing behind), and it is never re-sent. hostd
   * still gets a fresh key (and the calls of a fork keys derived from it), so that it dedupes
   * them as it does a job's. A keyed one becomes a job (see #submit).
   */
  once<E extends JobEndpoint, T>(
    endpoint: E,
    req: SchedParsedRequestOf<E>,
    precheck: () => Promise<unknown>,
    fn: (key: string) => Promise<T>,
  ): Promise<T> {
    if (!req.key) return fn(`${KEYLESS}-${(++keyless).toString(36)}`);
    return this.#submit(endpoint, req as SchedParsedRequestOf<E> & { key: string }, precheck);
  }

  /**
   * Queues a keyed request on the jobs stream and waits for its outcome in the requests bucket.
   * Whichever scheduler takes the job runs it (the one answering may die; the job is not lost),
   * and a repeat of a finished request gets the recorded reply.
   */
  async #submit<T>(endpoint: JobEndpoint, req: Record<string, unknown> & { key: string }, precheck: () => Promise<unknown>): Promise<T> {
    // Computed once, here: it travels in the job.
    const hash = requestHash(endpoint, req);
    // The job does not start past its client's deadline, and nobody waits for its outcome after it.
    const deadline = callerDeadline() ?? Date.now() + this.opts.hostTimeoutMs;
    const now = await this.#idem.peek(req.key);
    if (now && now.entry.hash !== hash) throw keyReused(req.key);
    if (now?.entry.state === 'done') return now.entry.reply as T;
    const since = now?.revision ?? 0;
    const waitMs = Math.max(1, Math.min(this.opts.hostTimeoutMs, deadline - Date.now()));
    if (now && underWay(now.entry)) return this.#idem.outcome<T>(req.key, hash, since, waitMs);
    // What can be refused at once is, before anything is queued or recorded.
    await precheck();
    // Waited on before the job is queued: its outcome may be written before the publish is acknowledged.
    const waiting = this.#idem.waitFor<T>(req.key, hash, since, waitMs);
    try {
      const job: Job = { v: 1, endpoint, key: req.key, hash, request: req, submittedAt: new Date().toISOString() };
      await this.queue.submitKeyed(job, { seenRevision: now?.revision, deadline });
    } catch (e) {
      waiting.cancel();
      throw e;
    }
    return waiting.done;
  }

  /**
   * Whether this delivery may run without claiming the key first: nothing can be running it. It
   * is the job's first delivery (a later one follows a run that may still be going), the key has
   * no record at all (a run that ended, or one that lasts, would have left one), and the job is
   * fresh: a job of a scheduler of the previous version, queued on its endpoint's subject, has no
   * subject to itself, but a repeat of it is dropped by the stream for DEDUPE_WINDOW_MS, by when a
   * run of this one has claimed the key, or its worker died and its next delivery has.
   */
  async #unclaimed(d: JobDelivery): Promise<boolean> {
    // Template builds and template boots are always claimed: the template reaper takes a key with
    // no record for one that ended (template-build.ts jobEnded) and cleans up after it.
    if (d.job.endpoint === 'template.create' || (d.job.endpoint === 'vm.boot' && d.job.request['template'] !== undefined)) return false;
    const age = Date.now() - Date.parse(d.job.submittedAt);
    return d.attempt === 1 && age < this.#freshMs && (await this.#idem.unrecorded(d.job.key));
  }

  /**
   * Runs one delivery of a job. A failure that a later attempt may not meet (a host down or not
   * answering) sends the job back to the queue, with a growing delay, until its last delivery.
   * One past its last run, or first taken after its client's deadline, is failed, not run.
   */
  async run(d: JobDelivery): Promise<JobOutcome> {
    const { job } = d;
    const log = this.log.child({ job: job.key, endpoint: job.endpoint, attempt: d.attempt });
    // The hash is the submitter's (only schedulers may queue jobs); the request is checked, since it is run.
    const parsed = schedContract[job.endpoint].request.safeParse(job.request);
    if (!parsed.success) return { ack: false, drop: 'request does not match its schema' };
    const refusal = jobRefusal(d);
    if (refusal) return failUnrun(this.#idem, d, refusal, { waitMs: 2 * this.opts.leaseMs, startWindowMs: this.opts.startWindowMs() }, log);
    const retryLater = (e: ForkyError): boolean => !d.last && triedAgain(e);
    const perform = this.perform[job.endpoint] as (req: unknown, key: string, last: boolean) => Promise<unknown>;
    const fn = (): Promise<unknown> => perform(parsed.data, job.key, d.last);
    try {
      if (await this.#unclaimed(d)) await this.#idem.runUnclaimed(job.key, job.hash, fn, retryLater);
      else await this.#idem.run(job.key, job.hash, this.opts.hostTimeoutMs, fn, retryLater);
      log.info('job done');
      return { ack: true };
    } catch (e) {
      const fe = asForkyError(e);
      if (retryLater(fe)) {
        log.warn({ err: fe }, 'job failed for now; it goes back to the queue');
        return { ack: false, retryInMs: Math.min(30_000, 2_000 * 2 ** (d.attempt - 1)) };
      }
      // Recorded as failed (the client sees the error); the job itself is finished.
      log.warn({ err: fe }, 'job failed');
      return { ack: true };
    }
  }
}
