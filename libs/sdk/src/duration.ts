import { ValidationError } from '@forky/base';
import { IdleRule, TtlMs } from '@forky/contract';

/** A span of time: milliseconds, or a string such as `1500ms`, `90s`, `10m`, `2h`, `7d` (a bare number string is milliseconds). */
export type Duration = number | string;

/** What to do with a VM nobody has used for `after` (no exec, process output, file or port activity). */
export interface IdleOption {
  after: Duration;
  /** `pause`: it resumes by itself when an exec, file, process or port request reaches it. */
  then: 'pause' | 'destroy';
}

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/**
 * A duration in milliseconds: the one parser of the SDK and the CLI (`--ttl`, `--idle`,
 * `--ready-timeout`). Bad input is a ValidationError naming `field`.
 */
export function parseDuration(value: Duration, field = 'duration'): number {
  const bad = (): ValidationError =>
    new ValidationError(`${field} must be a duration like 90s, 10m, 2h or 1500ms (a number is milliseconds)`, { field });
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw bad();
    return value;
  }
  if (typeof value !== 'string') throw bad();
  const m = /^(\d{1,15})(ms|s|m|h|d)?$/.exec(value.trim());
  if (!m) throw bad();
  const ms = Number(m[1]) * UNIT_MS[(m[2] ?? 'ms') as keyof typeof UNIT_MS];
  if (!Number.isSafeInteger(ms)) throw bad();
  return ms;
}

/** `ttl` as the contract's `ttlMs`, within its bounds (1 s to 30 days). */
export function ttlMs(ttl: Duration, field = 'ttl'): number {
  const ms = parseDuration(ttl, field);
  if (!TtlMs.safeParse(ms).success) throw new ValidationError(`${field}: from 1s to 30d (got ${ms} ms)`, { field });
  return ms;
}

/** `idle` as the contract's rule: `after` within 1 s to 30 days, `then` pause or destroy. */
export function idleRule(idle: IdleOption, field = 'idle'): IdleRule {
  if (typeof idle !== 'object' || idle === null) throw new ValidationError(`${field} must be { after, then }`, { field });
  const afterMs = ttlMs(idle.after, `${field}.after`);
  const rule = IdleRule.safeParse({ afterMs, then: idle.then });
  if (!rule.success) throw new ValidationError(`${field}.then must be 'pause' or 'destroy'`, { field: `${field}.then` });
  return rule.data;
}

/** The lifetime fields of a boot or fork request, from the SDK's options; nothing when neither is given. */
export function lifetime(o: { ttl?: Duration | undefined; idle?: IdleOption | undefined }): { ttlMs?: number; idle?: IdleRule } {
  return {
    ...(o.ttl === undefined ? {} : { ttlMs: ttlMs(o.ttl) }),
    ...(o.idle === undefined ? {} : { idle: idleRule(o.idle) }),
  };
}
