/**
 * Every failure that crosses a module boundary is a ForkyError: a stable `code` for programs,
 * a message for people, an optional `cause` for logs. Remote callers get code + message only.
 */
export const ErrorCodes = {
  BAD_REQUEST: 400,
  NOT_FOUND: 404,
  INVALID_STATE: 409,
  CONFLICT: 409,
  INCOMPATIBLE: 422,
  CAPACITY: 507,
  TIMEOUT: 504,
  UNAVAILABLE: 503,
  QEMU: 500,
  INTERNAL: 500,
} as const;
export type ErrorCode = keyof typeof ErrorCodes;

export interface ErrorDetails {
  /** The request field at fault, as a dotted path (`count`, `source.snapshot`). */
  readonly field?: string;
  readonly [key: string]: unknown;
}

export class ForkyError extends Error {
  override readonly name: string = 'ForkyError';
  readonly code: ErrorCode;
  readonly details: ErrorDetails | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: ErrorDetails }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }

  /** The status number used in NATS micro error headers. */
  get status(): number {
    return ErrorCodes[this.code];
  }
}

export class ValidationError extends ForkyError {
  override readonly name = 'ValidationError';
  constructor(message: string, details?: ErrorDetails) {
    super('BAD_REQUEST', message, { details });
  }
}

export class NotFoundError extends ForkyError {
  override readonly name = 'NotFoundError';
  constructor(kind: string, id: string) {
    super('NOT_FOUND', `${kind} ${JSON.stringify(id)} not found`, { details: { kind, id } });
  }
}

export class InvalidStateError extends ForkyError {
  override readonly name = 'InvalidStateError';
  constructor(message: string, details?: ErrorDetails) {
    super('INVALID_STATE', message, { details });
  }
}

export class ConflictError extends ForkyError {
  override readonly name = 'ConflictError';
  constructor(message: string, details?: ErrorDetails) {
    super('CONFLICT', message, { details });
  }
}

export class IncompatibleError extends ForkyError {
  override readonly name = 'IncompatibleError';
  constructor(message: string, details?: ErrorDetails) {
    super('INCOMPATIBLE', message, { details });
  }
}

export class CapacityError extends ForkyError {
  override readonly name = 'CapacityError';
  constructor(message: string, details?: ErrorDetails, cause?: unknown) {
    super('CAPACITY', message, { details, cause });
  }
}

export class DeadlineError extends ForkyError {
  override readonly name = 'DeadlineError';
  constructor(what: string, ms: number, cause?: unknown) {
    super('TIMEOUT', `${what}: no answer within ${ms} ms`, { cause, details: { timeoutMs: ms } });
  }
}

/**
 * A write the filesystem had no room for: errno ENOSPC (or EDQUOT) from a system call, or a
 * tool's message for it (`cp`, `qemu-img` report strerror on stderr).
 */
export function isNoSpace(err: unknown): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  const text = err instanceof Error ? `${err.message} ${String((err as { stderr?: unknown }).stderr ?? '')}` : String(err);
  return /No space left on device|Disk quota exceeded/.test(text);
}

/** Wraps anything thrown into a ForkyError, keeping ForkyErrors as they are; a full disk is CAPACITY. */
export function asForkyError(err: unknown): ForkyError {
  if (err instanceof ForkyError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (isNoSpace(err)) {
    // What was being written, where the error says (fs errors carry path and syscall).
    const { path, dest, syscall } = (err ?? {}) as { path?: unknown; dest?: unknown; syscall?: unknown };
    const where = typeof dest === 'string' ? dest : typeof path === 'string' ? path : undefined;
    return new CapacityError(
      `no space left on device${where ? ` writing ${where}` : ''}${typeof syscall === 'string' ? ` (${syscall})` : ''}: ${message}`,
      { ...(where ? { file: where } : {}) },
      err,
    );
  }
  return new ForkyError('INTERNAL', message, { cause: err });
}
