import { InvalidArgumentError } from 'commander';
import type { IdleRule } from '@forky/contract';
import { parseDuration, ttlMs } from '@forky/sdk';

/** The SDK's error for a bad value, as commander's own: it names the flag, exits 2, sends nothing. */
function asArgument<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/** `--ready-timeout 90s` and the like: the SDK's one duration parser (`1500ms`, `90s`, `10m`, `2h`, `7d`; a bare number is ms). */
export const durationArg =
  (flag: string) =>
  (v: string): number =>
    asArgument(() => parseDuration(v, `--${flag}`));

/** `--ttl 10m`: from 1s to 30d. */
export const ttlArg = (v: string): number => asArgument(() => ttlMs(v, '--ttl'));

/** `--idle 5m:pause`: the idle rule. */
export const idleArg = (v: string): IdleRule => {
  const at = v.lastIndexOf(':');
  const then = v.slice(at + 1);
  if (at <= 0 || (then !== 'pause' && then !== 'destroy'))
    throw new InvalidArgumentError(
      `--idle must be DURATION:pause or DURATION:destroy (e.g. 5m:pause), not ${JSON.stringify(v).slice(0, 60)}`,
    );
  return { afterMs: asArgument(() => ttlMs(v.slice(0, at), '--idle')), then };
};

/** How long until `at`, for a table: `9m58s`, `1h59m`, `2d3h`; `now` once it has passed. */
export function remaining(at: string | undefined, now = Date.now()): string | undefined {
  const t = at === undefined ? NaN : Date.parse(at);
  if (Number.isNaN(t)) return undefined;
  const s = Math.round((t - now) / 1000);
  if (s <= 0) return 'now';
  const [d, h, m] = [Math.floor(s / 86_400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60];
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  return m > 0 ? `${m}m${s % 60}s` : `${s}s`;
}
