export { QmpClient, type QmpEvent, type QmpVersion, type QmpOptions } from './qmp.js';
export { GuestAgentClient, MAX_REPLY_LINE, type ExecOutput } from './guest-agent.js';
export { QmpCommandError, QmpClosedError, ProtocolError, GuestAgentError, ReplyTooLargeError, ExecOutputTooLargeError } from './errors.js';
export { BoundedLineSplitter, LineSplitter, OverlongLine } from './lines.js';
