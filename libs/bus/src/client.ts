import { headers, type Msg, type NatsConnection } from '@nats-io/nats-core';
import type { z } from 'zod';
import { DeadlineError, ForkyError, asForkyError } from '@forky/base';
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
import { PastDeadlineError, outgoingTimes, setTimeHeaders } from './deadlines.js';
import { headerOf, setHeader } from './headers.js';
import { attemptBy, sendWithRetries, type RetryOptions } from './resend.js';

/** The deadline of a request whose options name none. */
const DEFAULT_TIMEOUT_MS = 30_000;

export interface RequestOptions {
  timeoutMs?: number;
  format?: Format;
  /** Epoch ms when the caller gives up (Forky-Deadline); the request's deadline is never later than now + timeoutMs. */
  deadline?: number;
  /** Epoch ms by which the service must have started it (Forky-Start-By): the caller may give up on it from then. */
  startBy?: number;
}

/**
 * Sends a request and returns the reply body, or throws the remote error as a RemoteError
 * (code + message), a DeadlineError, or UNAVAILABLE when nothing serves the subject. It carries
 * its deadline (see outgoingTimes: sent from a handler, never later than that request's), so a
 * service that reads it too late refuses it rather than doing work nobody waits for.
 */
export async function request(nc: NatsConnection, subject: string, body: unknown, opts: RequestOptions = {}): Promise<unknown> {
  const format = opts.format ?? 'msgpack';
  const now = Date.now();
  const times = outgoingTimes({ timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, deadline: opts.deadline, startBy: opts.startBy }, now);
  const timeoutMs = Math.floor(times.deadline - now);
  if (timeoutMs < 1)
    throw new PastDeadlineError(`request ${subject} not sent: its caller gave up at ${new Date(times.deadline).toISOString()}`, {
      deadline: times.deadline,
    });
  const h = headers();
  setHeader(h, 'Content-Type', CONTENT_TYPE[format]);
  setTimeHeaders(h, times);
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
  const decoded = decodeReply(msg, subject);
  if (msg.headers?.get('Nats-Service-Error-Code')) {
    const w = WireError.safeParse(decoded);
    if (w.success) throw fromWireError(w.data, subject);
    throw new ForkyError('INTERNAL', `${subject}: ${msg.headers.get('Nats-Service-Error') || 'service error'}`);
  }
  return decoded;
}

/** A reply that cannot be read (not a body, headers the client cannot parse) is the service's fault: INTERNAL, not BAD_REQUEST. */
function decodeReply(msg: Msg, subject: string): unknown {
  try {
    return decodeBody(msg.data, headerOf(msg, 'Content-Type')).value;
  } catch (e) {
    throw new ForkyError('INTERNAL', `${subject}: the reply cannot be read: ${asForkyError(e).message}`, { cause: e });
  }
}

export interface ClientOptions extends RequestOptions {
  /**
   * Send a request again when its reply is lost, if it is a read or carries an idempotency key
   * (see resend.ts); without this option every request is sent once.
   */
  retry?: RetryOptions;
}

/** One request, re-sent after a lost reply when `retry` is set and the request allows it. */
function send(
  nc: NatsConnection,
  endpoint: HostdEndpoint | SchedEndpoint,
  subject: string,
  body: unknown,
  opts: ClientOptions,
): Promise<unknown> {
  const { retry, ...reqOpts } = opts;
  if (!retry) return request(nc, subject, body, reqOpts);
  const once = (): Promise<unknown> => {
    const { deadline } = outgoingTimes({ timeoutMs: reqOpts.timeoutMs ?? DEFAULT_TIMEOUT_MS, deadline: reqOpts.deadline });
    // The same deadline for the attempt and its request's header, computed once.
    return attemptBy(deadline, `request ${subject}`, () => request(nc, subject, body, { ...reqOpts, deadline }));
  };
  return sendWithRetries(endpoint, body, once, retry);
}

/** A typed client of one hostd. */
export class HostdClient {
  constructor(
    private readonly nc: NatsConnection,
    readonly hostId: string,
    private readonly defaults: ClientOptions = {},
  ) {}

  async call<E extends HostdEndpoint>(endpoint: E, body: RequestOf<E>, opts: ClientOptions = {}): Promise<ReplyOf<E>> {
    const reply = await send(this.nc, endpoint, subjects.host(this.hostId, endpoint), body, { ...this.defaults, ...opts });
    return (hostdContract[endpoint].reply as z.ZodType).parse(reply) as ReplyOf<E>;
  }
}

/** A typed client of the scheduler (any instance answers: they share a queue group). */
export class SchedulerClient {
  constructor(
    private readonly nc: NatsConnection,
    private readonly defaults: ClientOptions = {},
  ) {}

  async call<E extends SchedEndpoint>(endpoint: E, body: SchedRequestOf<E>, opts: ClientOptions = {}): Promise<SchedReplyOf<E>> {
    const reply = await send(this.nc, endpoint, subjects.sched(endpoint), body, { ...this.defaults, ...opts });
    return (schedContract[endpoint].reply as z.ZodType).parse(reply) as SchedReplyOf<E>;
  }
}
