export { QmpClient, type QmpEvent, type QmpVersion, type QmpOptions } from './qmp.js';
export { GuestAgentClient, type ExecOutput } from './guest-agent.js';
export { QmpCommandError, QmpClosedError, ProtocolError, GuestAgentError } from './errors.js';
export { LineSplitter } from './lines.js';
