export { startScheduler, SCHEDULER_VERSION, type RunningScheduler } from './run.js';
export { loadSchedulerConfig, SchedulerConfig } from './config.js';
export { Scheduler, placeChildren } from './scheduler.js';
export { pickHost, hostStatus } from './placement.js';
export { Idempotency, requestHash } from './idempotency.js';
