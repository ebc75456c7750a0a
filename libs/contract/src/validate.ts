import type { z } from 'zod';
import { ValidationError } from '@forky/base';
import { boundedText, quoteText } from './safe-text.js';

/** Issues reported per error, unknown keys named per issue, and characters per message. */
const MAX_ISSUES = 5;
const MAX_KEYS = 5;
const MAX_MESSAGE = 300;
/** A path segment shown bare; anything else (a key from the request) is quoted and escaped. */
const PLAIN_SEGMENT = /^[A-Za-z_$][A-Za-z0-9_$-]{0,63}$/;

/**
 * A field's dotted path (`items.0.count`) as a request names it. Key names come from the
 * request, so one that is not a plain name is quoted the way JSON would (`"a\nb"`), and a deep
 * path is cut: the path goes into messages, details and logs.
 */
export function fieldPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(body)';
  const segments = path
    .slice(0, 8)
    .map((p) =>
      typeof p === 'number' || (typeof p === 'string' && PLAIN_SEGMENT.test(p))
        ? String(p)
        : quoteText(typeof p === 'symbol' ? p.description : p, 40),
    );
  return path.length > 8 ? `${segments.join('.')}.…` : segments.join('.');
}

/** What was wrong, in words that cannot carry the request's own text unescaped. */
function issueMessage(i: z.core.$ZodIssue): string {
  if (i.code === 'unrecognized_keys') {
    const names = i.keys.slice(0, MAX_KEYS).map((k) => quoteText(k, 40));
    const more = i.keys.length > MAX_KEYS ? ` and ${i.keys.length - MAX_KEYS} more` : '';
    return `unknown key${i.keys.length === 1 ? '' : 's'} ${names.join(', ')}${more}`;
  }
  // Zod's own messages quote record keys and values without escaping them.
  return boundedText(i.message, MAX_MESSAGE).replace(/[\n\t]+/g, ' ');
}

/** Parses `value` with `schema`; the error names the first field at fault and what was wrong. */
export function parseOrThrow<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.slice(0, MAX_ISSUES).map((i) => ({ field: fieldPath(i.path), message: issueMessage(i) }));
  const first = issues[0] ?? { field: '(body)', message: 'invalid' };
  const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more)` : '';
  throw new ValidationError(`invalid ${boundedText(what, 80)}: ${first.field}: ${first.message}${more}`, { field: first.field, issues });
}
