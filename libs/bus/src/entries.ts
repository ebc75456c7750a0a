import type { KvEntry } from '@nats-io/kv';
import { z } from 'zod';
import type { Logger } from '@forky/base';
import { HostId, excerpt, fieldPath, headerText } from '@forky/contract';

/** `vm.<id>` / `snap.<id>` in the locator: the host that holds it (what kv-directory writes). */
export const LocatorEntry = z.strictObject({ host: HostId });
export type LocatorEntry = z.infer<typeof LocatorEntry>;

/** A key the KV client will read back; a raw publisher can store others, which it throws on. */
const READABLE_KEY = /^[-/=.\w]{1,1024}$/;
export const isReadableKey = (k: string): boolean => READABLE_KEY.test(k) && !k.startsWith('.') && !k.endsWith('.');

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Why `bytes` are not a `schema`, or the value they hold. */
export function parseJsonBytes<S extends z.ZodType>(
  schema: S,
  bytes: Uint8Array,
): { ok: true; value: z.infer<S> } | { ok: false; why: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    return { ok: false, why: `not JSON text (${headerText((e as Error)?.message, 80)})` };
  }
  const r = schema.safeParse(raw);
  if (r.success) return { ok: true, value: r.data as z.infer<S> };
  const i = r.error.issues[0];
  return { ok: false, why: i ? `${fieldPath(i.path)}: ${headerText(i.message, 120)}` : 'invalid' };
}

/**
 * Bad entries are logged once per source per minute (with how many were left unsaid): a host
 * that writes garbage on every heartbeat must not flood the log. At most 1000 sources are kept.
 */
const lastLogged = new Map<string, { at: number; suppressed: number }>();

/** Logs a bad entry as one bounded line, saying where it is, why it is bad and how it starts. */
export function logBadEntry(log: Logger, where: string, why: string, bytes: Uint8Array | string): void {
  const now = Date.now();
  const seen = lastLogged.get(where);
  if (seen && now - seen.at < 60_000) {
    seen.suppressed++;
    return;
  }
  if (lastLogged.size >= 1000) lastLogged.clear();
  lastLogged.set(where, { at: now, suppressed: 0 });
  log.warn(
    {
      where: headerText(where, 200),
      why: headerText(why, 200),
      value: excerpt(bytes, 80),
      size: bytes.length,
      suppressedBefore: seen?.suppressed ?? 0,
    },
    'a bad entry was ignored',
  );
}

/**
 * The value of an entry someone else may have written, checked with `schema`: a deleted or
 * absent entry, and one that is not a valid `schema` (logged), are all undefined.
 */
export function entryValue<S extends z.ZodType>(schema: S, e: KvEntry | null | undefined, log: Logger): z.infer<S> | undefined {
  if (!e || e.operation !== 'PUT') return undefined;
  const r = parseJsonBytes(schema, e.value);
  if (r.ok) return r.value;
  logBadEntry(log, `${e.bucket}/${e.key}`, r.why, e.value);
  return undefined;
}
