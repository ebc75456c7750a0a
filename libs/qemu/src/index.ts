export { QmpClient, type QmpEvent, type QmpVersion, type QmpOptions } from './qmp.js';
export { GuestAgentClient, type ExecOutput } from './guest-agent.js';
export { QmpCommandError, QmpClosedError, ProtocolError, GuestAgentError, ReplyTooLargeError, ExecOutputTooLargeError } from './errors.js';
