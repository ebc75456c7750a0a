export {
  ErrorCodes,
  ForkyError,
  ValidationError,
  NotFoundError,
  InvalidStateError,
  ConflictError,
  IncompatibleError,
  CapacityError,
  DeadlineError,
  asForkyError,
  isNoSpace,
  type ErrorCode,
  type ErrorDetails,
} from './errors.js';
export { withDeadline, delay, pollUntil, mapSettled, type PollOptions } from './deadline.js';
export { safeJoin, checkSocketPath } from './paths.js';
export { newId } from './ids.js';
export { createLogger, silentLogger, type Logger, type LoggerOptions } from './logger.js';
export { KeyedMutex, Semaphore } from './mutex.js';
export { readConfigFile, parseConfig } from './config.js';
