import type { KV } from '@nats-io/kv';
import { ForkyError, asForkyError, newId, type ErrorCode, type Logger } from '@forky/base';
import { callerDeadline, type JobDelivery, type JobOutcome, type JobQueue } from '@forky/bus';
import { schedContract, type Job, type JobEndpoint, type SchedParsedRequestOf } from '@forky/contract';
import { Idempotency, keyReused, requestHash, underWay } from './idempotency.js';
import { failUnrun, jobRefusal } from './deadlines.js';

/** Failures a later attempt may not meet: a host down, or not answering in time. */
export const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['UNAVAILABLE', 'TIMEOUT']);

/** What a job of each endpoint does, under its key; `last` says whether it is the job's last delivery. */
export type Perform = { [E in JobEndpoint]: (req: SchedParsedRequestOf<E>, key: string, last: boolean) => Promise<unknown> };

export interface JobsOptions {
  /** How long a forwarded request may take on its host; also the longest wait for a job's outcome. */
  hostTimeoutMs: number;
  leaseMs: number;
  /** How long a call already sent to a host may still start there (see failUnrun). */
  startWindowMs: () => number;
}

/**
 * Requests that change the cluster. A keyed one is a job on the jobs stream, run once per key
 * by whichever scheduler takes it, its outcome kept in the requests bucket; a keyless one runs
 * at once, here.
 */
export class Jobs {
  readonly #idem: Idempotency;

  constructor(
    requests: KV,
    /** Keyed requests go through it, so they outlive the scheduler that took them. */
    private readonly queue: JobQueue,
    private readonly perform: Perform,
    private readonly opts: JobsOptions,
    private readonly log: Logger,
  ) {
    // The owner names the process, so an operator (or a test) can tell whose lease a request holds.
    this.#idem = new Idempotency(requests, `${newId('sch', 6)}-pid${process.pid}`, opts.leaseMs, log);
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
    if (!req.key) return fn(newId('req', 16));
    return this.#submit(endpoint, req as SchedParsedRequestOf<E> & { key: string }, precheck);
  }

  /**
   * Queues a keyed request on the jobs stream and waits for its outcome in the requests bucket.
   * Whichever scheduler takes the job runs it (the one answering may die; the job is not lost),
   * and a repeat of a finished request gets the recorded reply.
   */
  async #submit<T>(endpoint: JobEndpoint, req: Record<string, unknown> & { key: string }, precheck: () => Promise<unknown>): Promise<T> {
    const hash = requestHash(endpoint, req);
    // The job does not start past its client's deadline, and nobody waits for its outcome after it.
    const deadline = callerDeadline() ?? Date.now() + this.opts.hostTimeoutMs;
    const now = await this.#idem.peek(req.key);
    if (now && now.entry.hash !== hash) throw keyReused(req.key);
    if (now?.entry.state === 'done') return now.entry.reply as T;
    if (!now || !underWay(now.entry)) {
      // What can be refused at once is, before anything is queued or recorded.
      await precheck();
      const job: Job = { v: 1, endpoint, key: req.key, hash, request: req, submittedAt: new Date().toISOString() };
      await this.queue.submit(job, `${req.key}@${now?.revision ?? 0}`, deadline);
    }
    return this.#idem.outcome<T>(req.key, hash, now?.revision ?? 0, Math.max(1, Math.min(this.opts.hostTimeoutMs, deadline - Date.now())));
  }

  /**
   * Runs one delivery of a job. A failure that a later attempt may not meet (a host down or not
   * answering) sends the job back to the queue, with a growing delay, until its last delivery.
   * One past its last run, or first taken after its client's deadline, is failed, not run.
   */
  async run(d: JobDelivery): Promise<JobOutcome> {
    const { job } = d;
    const log = this.log.child({ job: job.key, endpoint: job.endpoint, attempt: d.attempt });
    const parsed = schedContract[job.endpoint].request.safeParse(job.request);
    if (!parsed.success || requestHash(job.endpoint, job.request) !== job.hash)
      return { ack: false, drop: 'request does not match its schema or hash' };
    const refusal = jobRefusal(d);
    if (refusal) return failUnrun(this.#idem, d, refusal, { waitMs: 2 * this.opts.leaseMs, startWindowMs: this.opts.startWindowMs() }, log);
    // `final`: a timeout that is the request's own fault (a template's ready command never succeeding), not a host's.
    const retryLater = (e: ForkyError): boolean => !d.last && TRANSIENT.has(e.code) && e.details?.['final'] !== true;
    const perform = this.perform[job.endpoint] as (req: unknown, key: string, last: boolean) => Promise<unknown>;
    try {
      await this.#idem.run(job.key, job.hash, this.opts.hostTimeoutMs, () => perform(parsed.data, job.key, d.last), retryLater);
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
