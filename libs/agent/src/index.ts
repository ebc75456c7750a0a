export type * from './types.js';
export { connectAgent, type ConnectOptions } from './connect.js';
export { MAX_PAYLOAD } from './frame.js';
export { DEFAULT_WINDOW, MAX_WINDOW, MAX_GARBAGE_BYTES, MAX_INVALID_FRAMES, MAX_CALL_MSG_BYTES } from './limits.js';
export { SessionCache, type SessionCacheOptions } from './sessions.js';
