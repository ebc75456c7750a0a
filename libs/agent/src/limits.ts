import type { Logger } from '@forky/base';

export const DEFAULT_WINDOW = 256 * 1024;
export const MAX_WINDOW = 64 * 1024 * 1024;
/** A session that sends more garbage than this is closed (PROTOCOL.md, Frames). */
export const MAX_GARBAGE_BYTES = 64 * 1024 * 1024;
export const MAX_INVALID_FRAMES = 1024;
/** How long a CANCEL may go unanswered before the host forgets the stream (ends it PROTOCOL). */
export const DEFAULT_CANCEL_GRACE_MS = 10_000;
/** What `call()` collects in MSGs at most; more is for `open()` to stream. */
export const MAX_CALL_MSG_BYTES = 16 * 1024 * 1024;

/** Counters and sizes that show the host's memory stays bounded (tests read them through @forky/agent/internal). */
export interface SessionStats {
  readerBuffered: number;
  garbageBytes: number;
  invalidFrames: number;
  streams: number;
  maxQueuedBytes: number;
  paused: boolean;
  closed: boolean;
  /** Bytes of frames for the agent queued while its socket is backed up. */
  outboxBytes: number;
}

export interface SessionOptions {
  log?: Logger | undefined;
  cancelGraceMs?: number | undefined;
}
