// What tests reach beyond the public face (index.ts), as `@forky/scheduler/internal`; not for other packages.
export { startScheduler, SCHEDULER_VERSION, type RunningScheduler } from './run.js';
export { loadSchedulerConfig, SchedulerConfig } from './config.js';
export { Scheduler, type SchedulerOptions } from './scheduler.js';
export { MISSED_BEATS, hostStatus, pickHost, placeChildren } from './placement.js';
export { Idempotency, requestHash } from './idempotency.js';
export { COPY_GRACE } from './templates.js';
export { fork as schedFork } from './fork.js';
