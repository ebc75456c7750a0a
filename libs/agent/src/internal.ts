import { AgentSession } from './session.js';
import type { SessionStats } from './limits.js';
import type { GuestSession } from './types.js';

export * from './index.js';
export { crc32 } from './crc32.js';
export { encodeFrame, encodeJsonFrame, FrameReader, FrameType, HEADER_BYTES, HELLO_PREFIX_BYTES, type Frame } from './frame.js';
export { AgentEndSchema, AgentMsgSchema, HelloAckSchema, parseEnd, parseMsg, parseHelloAck } from './messages.js';
export type { SessionStats } from './limits.js';

/** The session's counters and buffer sizes, for tests that check memory stays bounded. */
export function sessionStats(session: GuestSession): SessionStats {
  if (!(session instanceof AgentSession)) throw new TypeError('not a session made by connectAgent');
  return session.stats();
}
