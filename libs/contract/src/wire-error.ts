import { z } from 'zod';
import { ErrorCodes, ForkyError, type ErrorCode } from '@forky/base';

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
  return { error: { code: err.code, message: err.message, ...(details ? { details } : {}) } };
}

/** A ForkyError rebuilt on the caller's side from a reply. */
export class RemoteError extends ForkyError {
  override readonly name = 'RemoteError';
  constructor(code: ErrorCode, message: string, readonly subject: string, details?: Record<string, unknown>) {
    super(code, message, { details });
  }
}

export function fromWireError(w: WireError, subject: string): RemoteError {
  const code = (w.error.code in ErrorCodes ? w.error.code : 'INTERNAL') as ErrorCode;
  return new RemoteError(code, w.error.message, subject, w.error.details);
}

/** Details go on the wire only if they are plain data. */
function safeDetails(d: Record<string, unknown>): Record<string, unknown> | undefined {
  try {
    return JSON.parse(JSON.stringify(d)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}
