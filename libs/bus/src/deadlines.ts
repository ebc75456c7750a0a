import { AsyncLocalStorage } from 'node:async_hooks';
import type { MsgHdrs } from '@nats-io/nats-core';
import { ForkyError, type ErrorDetails } from '@forky/base';
import { DEADLINE_HEADERS, DEFAULT_DEADLINE_MS, parseTimeHeader } from '@forky/contract';
import { headerOf, setHeader } from './headers.js';

/** When the caller of a request gives up on it, and (optionally) by when it had to be started. */
export interface CallerTimes {
  deadline: number;
  startBy?: number;
}

/** A request refused because its caller has given up on it, or may have: nothing of it was started. */
export class PastDeadlineError extends ForkyError {
  override readonly name = 'PastDeadlineError';
  constructor(message: string, details?: ErrorDetails) {
    super('TIMEOUT', message, { details });
  }
}

/** The times of the request being served, for the code its handler runs (and everything that awaits). */
const serving = new AsyncLocalStorage<CallerTimes>();

/**
 * Runs `fn` as no request's work: what it sends, and the timers it sets (which keep the context
 * they were made in), carry no caller's deadline. For background work a handler happens to start.
 */
export function outsideCaller<T>(fn: () => T): T {
  return serving.exit(fn);
}

/** The deadline of the request this code is serving, if it runs in a service handler. */
export function callerDeadline(): number | undefined {
  return serving.getStore()?.deadline;
}

const iso = (t: number): string => new Date(t).toISOString();

/** The times a received request carries; one without a deadline gets DEFAULT_DEADLINE_MS from its arrival. */
export function callerTimes(msg: { readonly headers?: MsgHdrs | undefined }, arrived: number): CallerTimes {
  const deadline = parseTimeHeader(DEADLINE_HEADERS.deadline, headerOf(msg, DEADLINE_HEADERS.deadline)) ?? arrived + DEFAULT_DEADLINE_MS;
  const startBy = parseTimeHeader(DEADLINE_HEADERS.startBy, headerOf(msg, DEADLINE_HEADERS.startBy));
  return startBy === undefined ? { deadline } : { deadline, startBy };
}

/**
 * Throws PastDeadlineError unless a request with these times may still start at `now`: before
 * its deadline and its start-by, by this service's clock (see CLOCK_SKEW_MS for clocks apart).
 */
export function refuseIfLate(t: CallerTimes, now = Date.now()): void {
  if (now > t.deadline) {
    throw new PastDeadlineError(`the caller gave up at ${iso(t.deadline)} (now ${iso(now)}); the request was not started`, {
      deadline: t.deadline,
    });
  }
  if (t.startBy !== undefined && now > t.startBy) {
    throw new PastDeadlineError(
      `the request had to start by ${iso(t.startBy)} (now ${iso(now)}), after which its caller may give up on this host; it was not started`,
      { startBy: t.startBy },
    );
  }
}

/**
 * The endpoint `ep` with its handler run in its caller's time: past the request's deadline (or
 * start-by) the handler is not called and the caller gets TIMEOUT; before it, the handler runs
 * with the request's times in scope, so the requests it makes in turn end by the same deadline.
 */
export function inCallerTime<E extends { handler: (req: unknown) => Promise<unknown> }>(
  ep: E,
  msg: { readonly headers?: MsgHdrs | undefined },
): E {
  const arrived = Date.now();
  return {
    ...ep,
    handler: async (req: unknown) => {
      const t = callerTimes(msg, arrived);
      refuseIfLate(t);
      return serving.run(t, () => ep.handler(req));
    },
  };
}

/**
 * The times of a request about to be sent: its deadline is the earliest of now + `timeoutMs`,
 * the caller's `deadline` and the deadline of the request being served (a request made for a
 * caller must not outlive it).
 */
export function outgoingTimes(
  opts: { timeoutMs: number; deadline?: number | undefined; startBy?: number | undefined },
  now = Date.now(),
): CallerTimes {
  const deadline = Math.min(now + opts.timeoutMs, opts.deadline ?? Infinity, callerDeadline() ?? Infinity);
  return opts.startBy === undefined ? { deadline } : { deadline, startBy: Math.min(opts.startBy, deadline) };
}

export function setTimeHeaders(h: MsgHdrs, t: CallerTimes): void {
  setHeader(h, DEADLINE_HEADERS.deadline, String(Math.floor(t.deadline)));
  if (t.startBy !== undefined) setHeader(h, DEADLINE_HEADERS.startBy, String(Math.floor(t.startBy)));
}
