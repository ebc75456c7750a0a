import { headers, nanos, type NatsConnection } from '@nats-io/nats-core';
import {
  AckPolicy,
  DeliverPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type Consumer,
  type JsMsg,
} from '@nats-io/jetstream';
import type { Logger } from '@forky/base';
import { DEADLINE_HEADERS, JOBS_CONSUMER, Job, STREAMS, decodeBody, encodeBody, parseTimeHeader, subjects } from '@forky/contract';
import { createOrOpen } from './buckets.js';
import { headerOf } from './headers.js';
import { retryTransient } from './retry.js';
import { setTimeHeaders } from './deadlines.js';
import { publishKeyedJob } from './job-publish.js';

export interface JobQueueOptions {
  /** 3 where a 3-node JetStream cluster exists. */
  replicas: number;
  /** How long a job may go without a sign of life before it is given to another scheduler. */
  ackWaitMs: number;
  /** Deliveries of one job that may run it (the last one's failure is recorded as final). */
  maxDeliver: number;
}

/** What a worker decides about a job it ran. */
export type JobOutcome = { ack: true } | { ack: false; retryInMs: number } | { ack: false; drop: string };

export interface JobDelivery {
  job: Job;
  /** 1 on the first delivery. */
  attempt: number;
  /** The last delivery that may run the job: no run follows this one. */
  last: boolean;
  /** Past the last run (that run ended without a word: its worker died): the job is to be failed on the record, not run. */
  pastLast: boolean;
  /** Epoch ms when the job's client gives up (Forky-Deadline of its message), if it says. */
  deadline?: number;
}

/**
 * The work-queue stream of jobs. A job is published once per submission (the message id
 * dedupes a client's repeats within the stream's window) and removed when a worker acks it.
 * A worker that dies stops calling `working()`, and the server hands the job to another worker
 * after `ackWaitMs`.
 */
export class JobQueue {
  readonly #stops: Array<() => void> = [];
  readonly #loops: Array<Promise<void>> = [];

  private constructor(
    private readonly nc: NatsConnection,
    private readonly consumer: Consumer,
    readonly opts: JobQueueOptions,
    private readonly log: Logger,
  ) {}

  static async open(nc: NatsConnection, opts: JobQueueOptions, log: Logger): Promise<JobQueue> {
    const jsm = await jetstreamManager(nc);
    await createOrOpen(
      () =>
        jsm.streams.add({
          name: STREAMS.jobs,
          subjects: [subjects.jobs],
          retention: RetentionPolicy.Workqueue,
          storage: StorageType.File,
          num_replicas: opts.replicas,
          // A job nobody ran in a day is stale; its client has long given up.
          max_age: nanos(24 * 3600 * 1000),
          duplicate_window: nanos(120_000),
        }),
      () => jsm.streams.info(STREAMS.jobs),
      `stream ${STREAMS.jobs}`,
    );
    // A consumer made before the extra delivery existed (or with another maxDeliver) is brought in line.
    const info = await createOrOpen(
      () =>
        jsm.consumers.add(STREAMS.jobs, {
          durable_name: JOBS_CONSUMER,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          ack_wait: nanos(opts.ackWaitMs),
          max_deliver: maxDeliveries(opts),
          num_replicas: opts.replicas,
        }),
      () => jsm.consumers.info(STREAMS.jobs, JOBS_CONSUMER),
      `consumer ${JOBS_CONSUMER} of ${STREAMS.jobs}`,
    );
    if (info.config.max_deliver !== maxDeliveries(opts))
      await jsm.consumers.update(STREAMS.jobs, JOBS_CONSUMER, { max_deliver: maxDeliveries(opts) });
    const consumer = await jetstream(nc).consumers.get(STREAMS.jobs, JOBS_CONSUMER);
    return new JobQueue(nc, consumer, opts, log.child({ component: 'jobs' }));
  }

  /**
   * Queues a job; `dedupeId` names this submission (repeats of it within two minutes are dropped),
   * `deadline` is when its client gives up. The deadline is a header, not a field of the Job: a
   * scheduler of the previous version still takes such a job (its Job schema is strict).
   */
  async submit(job: Job, dedupeId: string, deadline?: number): Promise<void> {
    const body = encodeBody(Job.parse(job), 'json');
    const h = headers();
    if (deadline !== undefined) setTimeHeaders(h, { deadline });
    // The message id makes a repeat after a lost ack harmless.
    await retryTransient(
      'job publish',
      () =>
        jetstream(this.nc).publish(subjects.job(job.endpoint), body, {
          msgID: dedupeId,
          ...(deadline !== undefined ? { headers: h } : {}),
        }),
      { log: this.log },
    );
  }

  /**
   * Queues a keyed job on its key's own subject, the publish being the key's claim (see
   * publishKeyedJob); `seenRevision` is the key's record, if it has one that is not under way.
   */
  submitKeyed(job: Job, opts: { seenRevision: number | undefined; deadline: number }): Promise<void> {
    return publishKeyedJob(this.nc, job, opts, this.log);
  }

  /** Runs `concurrency` workers, each taking one job at a time, until `stop`. */
  work(concurrency: number, run: (d: JobDelivery) => Promise<JobOutcome>): void {
    let stopped = false;
    this.#stops.push(() => (stopped = true));
    for (let i = 0; i < concurrency; i++) {
      this.#loops.push(
        (async () => {
          while (!stopped && !this.nc.isClosed()) {
            let msg: JsMsg | null;
            try {
              // A short expiry, so a stopping worker is not held by an open pull.
              msg = await this.consumer.next({ expires: 2_000 });
            } catch (err) {
              if (stopped || this.nc.isClosed()) return;
              this.log.warn({ err }, 'pulling a job failed; trying again');
              await new Promise((r) => setTimeout(r, 1_000));
              continue;
            }
            if (msg) await this.#handle(msg, run);
          }
        })(),
      );
    }
  }

  async #handle(msg: JsMsg, run: (d: JobDelivery) => Promise<JobOutcome>): Promise<void> {
    const attempt = msg.info.deliveryCount;
    let job: Job;
    try {
      job = Job.parse(decodeBody(msg.data, 'application/json').value);
    } catch (err) {
      this.log.error({ err, seq: msg.seq }, 'a job that is not a Job was dropped');
      msg.term('not a job');
      return;
    }
    // The server must hear from us within ackWait, or it gives the job to someone else.
    const alive = setInterval(() => msg.working(), Math.max(200, this.opts.ackWaitMs / 3));
    try {
      const outcome = await run({
        job,
        attempt,
        last: attempt >= this.opts.maxDeliver,
        pastLast: attempt > this.opts.maxDeliver,
        ...jobDeadline(msg, this.log),
      });
      if (outcome.ack) msg.ack();
      else if ('retryInMs' in outcome) msg.nak(outcome.retryInMs);
      else msg.term(outcome.drop);
    } catch (err) {
      // A worker that cannot even record an outcome (NATS down): let the job come back.
      this.log.warn({ err, key: job.key }, 'job worker failed; the job will be delivered again');
      msg.nak(1_000);
    } finally {
      clearInterval(alive);
    }
  }

  /**
   * Stops taking jobs and waits up to `graceMs` for the current ones to end. A job still running
   * after that is not lost: once this process stops saying it works on it, the server redelivers it.
   */
  async stop(graceMs = 10_000): Promise<void> {
    for (const s of this.#stops) s();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(this.#loops), new Promise((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
  }
}

/**
 * Deliveries the server makes: one more than may run the job. A last run whose worker dies says
 * nothing; the extra delivery, after ackWait, is the one that records the job failed (else it
 * would sit unfinished, its client waiting for an outcome no one writes).
 */
function maxDeliveries(opts: JobQueueOptions): number {
  return opts.maxDeliver + 1;
}

/** The job's client deadline from its message; a malformed one is logged and taken as none. */
function jobDeadline(msg: JsMsg, log: Logger): { deadline?: number } {
  try {
    const deadline = parseTimeHeader(DEADLINE_HEADERS.deadline, headerOf(msg, DEADLINE_HEADERS.deadline));
    return deadline === undefined ? {} : { deadline };
  } catch (err) {
    log.warn({ err, seq: msg.seq }, "a job's deadline header is not a time; it is taken as none");
    return {};
  }
}
