import { ValidationError } from '@forky/base';

/**
 * Headers of a request that asks for work (and of a job on the jobs stream), beside
 * Content-Type. Times are epoch milliseconds, in decimal digits.
 *   Forky-Deadline  when the caller stops waiting: no service starts the request after it
 *   Forky-Start-By  when the service must have started it: the scheduler's calls to a host, which
 *                   it gives up early if the host stops reporting (it never may before this time)
 */
export const DEADLINE_HEADERS = { deadline: 'Forky-Deadline', startBy: 'Forky-Start-By' } as const;

/**
 * How far apart two machines' clocks may be. A service compares a request's times with its own
 * clock; a caller that gives up early on a start-by waits this much past it first, so that a
 * service whose clock is behind by up to this much cannot start the request after the caller
 * gave up. A deadline is not padded: a service may start a request up to this much after its
 * caller's TIMEOUT (which says the outcome is unknown, not that nothing was done). Hosts are
 * expected to run NTP, which keeps them within milliseconds; a second covers a clock being stepped.
 */
export const CLOCK_SKEW_MS = 1_000;

/** The deadline a service gives a request that carries none (a raw `nats req`): this long from its arrival. */
export const DEFAULT_DEADLINE_MS = 600_000;

/** A time header's value, or undefined if absent; anything but decimal epoch milliseconds is refused. */
export function parseTimeHeader(name: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d{1,15}$/.test(value.trim()))
    throw new ValidationError(`header ${name} must be a time in epoch milliseconds`, { field: `(header ${name})` });
  return Number(value.trim());
}
