import { z } from 'zod';
import { ErrorCodes, ForkyError, type ErrorCode } from '@forky/base';
import { boundedText } from './safe-text.js';

/** A message on the wire is for people: a few lines at most, whatever made it. */
const MAX_MESSAGE = 4000;
/** Details larger than this (as JSON) are left off, but for the field at fault. */
const MAX_DETAILS = 16_000;

/** The body of an error reply: a code and a message, never a stack. */
export const WireError = z.strictObject({
  error: z.strictObject({
    code: z.string(),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});
export type WireError = z.infer<typeof WireError>;

export function toWireError(err: ForkyError): WireError {
  const details = err.details && safeDetails(err.details);
  const code = err.code in ErrorCodes ? err.code : 'INTERNAL';
  return { error: { code, message: boundedText(err.message, MAX_MESSAGE), ...(details ? { details } : {}) } };
}

/** A ForkyError rebuilt on the caller's side from a reply. */
export class RemoteError extends ForkyError {
  override readonly name = 'RemoteError';
  constructor(
    code: ErrorCode,
    message: string,
    readonly subject: string,
    details?: Record<string, unknown>,
  ) {
    super(code, message, { details });
  }
}

export function fromWireError(w: WireError, subject: string): RemoteError {
  const code = (w.error.code in ErrorCodes ? w.error.code : 'INTERNAL') as ErrorCode;
  return new RemoteError(code, boundedText(w.error.message, MAX_MESSAGE), subject, w.error.details);
}

/** Details go on the wire only if they are plain data, and not too much of it. */
function safeDetails(d: Record<string, unknown>): Record<string, unknown> | undefined {
  try {
    const text = JSON.stringify(d);
    if (text.length <= MAX_DETAILS) return JSON.parse(text) as Record<string, unknown>;
    return typeof d.field === 'string' ? { field: boundedText(d.field, 200) } : undefined;
  } catch {
    return undefined;
  }
}
