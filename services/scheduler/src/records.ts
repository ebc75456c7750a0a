import { createHash } from 'node:crypto';
import { ConflictError } from '@forky/base';
import { z } from 'zod';
import { WireError } from '@forky/contract';

/**
 * A key's record in the requests bucket. It is read back, so it is checked: a record that is
 * not one (written by hand, or garbage) is logged and counts as no record. Loose, so a field a
 * newer scheduler adds does not make an older one drop the record.
 */
export const Entry = z.looseObject({
  state: z.enum(['pending', 'done', 'failed']),
  hash: z.string().max(128),
  owner: z.string().max(256),
  leaseUntil: z.number(),
  reply: z.unknown().optional(),
  /** The failure, as a caller gets it: code, message and the field at fault, never a stack. */
  error: WireError.shape.error.optional(),
  /** A failed attempt that will be made again (its job goes back to the queue). */
  retry: z.boolean().optional(),
});
export type Entry = z.infer<typeof Entry>;

export interface Recorded {
  entry: Entry;
  revision: number;
}

/** A request under this key is being run, or will be run again: a new submission would be a duplicate. */
export function underWay(entry: Entry, now = Date.now()): boolean {
  return (entry.state === 'pending' && entry.leaseUntil > now) || (entry.state === 'failed' && !!entry.retry);
}

/** The one error for a key sent again with a different request. */
export function keyReused(key: string): ConflictError {
  return new ConflictError(`idempotency key ${key} was already used for a different request`, { field: 'key' });
}

/** A stable digest of a request, without its key: the same key must mean the same request. */
export function requestHash(endpoint: string, req: Record<string, unknown>): string {
  const { key: _key, ...rest } = req;
  return createHash('sha256')
    .update(`${endpoint}\n${canonical(rest)}`)
    .digest('hex')
    .slice(0, 32);
}

/** JSON with every object's keys sorted, at every depth (a replacer array would drop nested keys). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** A write refused because someone else wrote the subject first (kv.create/update, or a publish expecting a last sequence). */
export function isClaimLost(e: unknown): boolean {
  const err = e as { code?: number; api_error?: { err_code?: number }; message?: string };
  return err?.api_error?.err_code === 10071 || /wrong last sequence/i.test(err?.message ?? '');
}
