export * from './errors.js';
export * from './deadline.js';
export * from './paths.js';
export * from './ids.js';
export * from './logger.js';
export * from './mutex.js';
export * from './config.js';
