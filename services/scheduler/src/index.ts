// What other packages use: start a scheduler, and its config. Tests reach the rest through internal.ts.
export { startScheduler, SCHEDULER_VERSION, type RunningScheduler } from './run.js';
export { loadSchedulerConfig, SchedulerConfig } from './config.js';
export { Scheduler, type SchedulerOptions } from './scheduler.js';
