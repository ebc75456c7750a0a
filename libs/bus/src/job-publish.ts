import { headers, type NatsConnection } from '@nats-io/nats-core';
import type { Logger } from '@forky/base';
import { DEADLINE_HEADERS, Job, encodeBody, subjects } from '@forky/contract';
import { retryTransient } from './retry.js';

/** A JetStream API refusal, named the way retryTransient knows one (503: no leader yet, try again). */
class JsApiError extends Error {
  override readonly name = 'JetStreamApiError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** JetStream's err_code for a publish whose expected last subject sequence is not the subject's. */
const WRONG_LAST_SEQUENCE = 10071;

/**
 * Queues a keyed job on its key's own subject, expecting none there: the publish is the key's
 * claim, so the stream never holds two jobs of one key. One already there is queued or running,
 * and its outcome is the one to wait for. But when the key has a record that is not under way
 * (`seenRevision`: a failure, a lapsed lease), the job there may be one left behind by a run that
 * ended, never to be delivered again: this one is queued after it, and both then claim the key
 * before running. The message id makes a publish sent again harmless. `deadline` is a header,
 * not a field of the Job, so a scheduler of the previous version still takes the job.
 * A raw request, not jetstream().publish: the refusal's err_code and sequence are read from the
 * ack, at a fraction of the CPU (issue 21, point 7).
 */
export async function publishKeyedJob(
  nc: NatsConnection,
  job: Job,
  opts: { seenRevision: number | undefined; deadline: number },
  log: Logger,
): Promise<void> {
  const subject = subjects.jobOfKey(job.key);
  const body = encodeBody(job, 'json');
  const h = headers();
  h.set(DEADLINE_HEADERS.deadline, String(Math.floor(opts.deadline)));
  h.set('Nats-Msg-Id', `${job.key}@${opts.seenRevision ?? 0}`);
  /** Publishes expecting `last` as the subject's last sequence; the sequence in the way if another is there. */
  const send = (last: number): Promise<number | undefined> =>
    retryTransient(
      'job publish',
      async () => {
        h.set('Nats-Expected-Last-Subject-Sequence', String(last));
        const ack = (await nc.request(subject, body, { headers: h, timeout: 5_000 })).json<{
          error?: { code?: number; err_code?: number; description?: string };
        }>();
        if (!ack.error) return undefined;
        if (ack.error.err_code === WRONG_LAST_SEQUENCE)
          return Number(/wrong last sequence: (\d+)/.exec(ack.error.description ?? '')?.[1] ?? -1);
        throw new JsApiError(ack.error.code ?? 500, `queueing job ${job.key}: ${ack.error.description ?? 'refused'}`);
      },
      { log },
    );
  const inWay = await send(0);
  if (inWay === undefined) return;
  log.debug({ job: job.key, inWay }, 'a job of this key is already queued');
  // Refused again: another submission queued its job first, and that one is waited for.
  if (opts.seenRevision !== undefined && inWay > 0) await send(inWay);
}
