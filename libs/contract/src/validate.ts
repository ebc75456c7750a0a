import type { z } from 'zod';
import { ValidationError } from '@forky/base';

/** Parses `value` with `schema`; the error names the first field at fault and what was wrong. */
export function parseOrThrow<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.slice(0, 5).map((i) => {
    const field = i.path.map(String).join('.') || '(body)';
    const keys = 'keys' in i && Array.isArray(i.keys) ? ` ${i.keys.join(', ')}` : '';
    return { field, message: `${i.message}${keys}` };
  });
  const first = issues[0] ?? { field: '(body)', message: 'invalid' };
  throw new ValidationError(`invalid ${what}: ${first.field}: ${first.message}`, { field: first.field, issues });
}
