import { headers, type NatsConnection } from '@nats-io/nats-core';
import type { z } from 'zod';
import { DeadlineError, ForkyError } from '@forky/base';
import {
  CONTENT_TYPE,
  WireError,
  decodeBody,
  encodeBody,
  fromWireError,
  hostdContract,
  schedContract,
  subjects,
  type Format,
  type HostdEndpoint,
  type ReplyOf,
  type RequestOf,
  type SchedEndpoint,
  type SchedReplyOf,
  type SchedRequestOf,
} from '@forky/contract';

export interface RequestOptions {
  timeoutMs?: number;
  format?: Format;
}

/**
 * Sends a request and returns the reply body, or throws the remote error as a RemoteError
 * (code + message), a DeadlineError, or UNAVAILABLE when nothing serves the subject.
 */
export async function request(nc: NatsConnection, subject: string, body: unknown, opts: RequestOptions = {}): Promise<unknown> {
  const format = opts.format ?? 'msgpack';
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const h = headers();
  h.set('Content-Type', CONTENT_TYPE[format]);
  let msg;
  try {
    msg = await nc.request(subject, encodeBody(body, format), { timeout: timeoutMs, headers: h });
  } catch (e) {
    const err = e as Error;
    const cause = (err.cause ?? err) as Error;
    if (cause.name === 'NoRespondersError' || /no responders/i.test(err.message)) {
      throw new ForkyError('UNAVAILABLE', `no service answers on ${subject}`, { cause: e, details: { subject } });
    }
    if (cause.name === 'TimeoutError' || /timeout/i.test(err.message)) throw new DeadlineError(`request ${subject}`, timeoutMs, e);
    throw new ForkyError('UNAVAILABLE', `request ${subject} failed: ${err.message}`, { cause: e });
  }
  const decoded = decodeBody(msg.data, msg.headers?.get('Content-Type') || undefined).value;
  if (msg.headers?.get('Nats-Service-Error-Code')) {
    const w = WireError.safeParse(decoded);
    if (w.success) throw fromWireError(w.data, subject);
    throw new ForkyError('INTERNAL', `${subject}: ${msg.headers.get('Nats-Service-Error') || 'service error'}`);
  }
  return decoded;
}

/** A typed client of one hostd. */
export class HostdClient {
  constructor(
    private readonly nc: NatsConnection,
    readonly hostId: string,
    private readonly defaults: RequestOptions = {},
  ) {}

  async call<E extends HostdEndpoint>(endpoint: E, body: RequestOf<E>, opts: RequestOptions = {}): Promise<ReplyOf<E>> {
    const reply = await request(this.nc, subjects.host(this.hostId, endpoint), body, { ...this.defaults, ...opts });
    return (hostdContract[endpoint].reply as z.ZodType).parse(reply) as ReplyOf<E>;
  }
}

/** A typed client of the scheduler (any instance answers: they share a queue group). */
export class SchedulerClient {
  constructor(
    private readonly nc: NatsConnection,
    private readonly defaults: RequestOptions = {},
  ) {}

  async call<E extends SchedEndpoint>(endpoint: E, body: SchedRequestOf<E>, opts: RequestOptions = {}): Promise<SchedReplyOf<E>> {
    const reply = await request(this.nc, subjects.sched(endpoint), body, { ...this.defaults, ...opts });
    return (schedContract[endpoint].reply as z.ZodType).parse(reply) as SchedReplyOf<E>;
  }
}
