import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from '@forky/base';
import type { GuestEvent, GuestStream } from '@forky/agent';

export interface BridgeOptions {
  nc: NatsConnection;
  hostId: string;
  sid: string;
  vmId: string;
  stream: GuestStream;
  /** The guest's events, maybe with the first already asked for (an exec's `started`, for its pid). */
  events: AsyncIterator<GuestEvent>;
  first?: Promise<IteratorResult<GuestEvent>>;
  /** Whether the client sends bytes on `in` (stdin, a file written), and how many the host holds for it. */
  takesInput: boolean;
  inWindow: number;
  /** A file's bytes go out as `data`, a process's as its channel. */
  bytes: 'process' | 'file';
  /** A port connection: the guest's EOF goes out as `eof` (TCP half-close); other streams keep it to themselves. */
  eofOut?: boolean;
  /** Whether the stream's agent session has ended: only then does a GONE end go on as GONE. */
  sessionEnded?: () => boolean;
  /** A PTY exec: the only kind that takes `resize`. */
  pty?: boolean;
  idleMs: number;
  /** How long a stream never credited lives: past a client's request timeout, for a keyed retry (90 s). */
  startIdleMs?: number;
  keepaliveMs: number;
  /** How long the guest gets to end a stream once it is cancelled. */
  cancelGraceMs: number;
  /** Bytes moved on the stream (output, the client's input or credit): activity of its VM (its idle rule), said at most once a second. */
  onActivity?: (vmId: string) => void;
  log: Logger;
}

/** Figures of one stream, for tests and logs. */
export interface BridgeCounters {
  /** Bytes taken from the guest and not yet published (now, and the most ever). */
  held: number;
  maxHeld: number;
  /** Bytes sent against the client's credit: chunks and event bodies. */
  sent: number;
  /** Input bytes received and not yet written to the guest, and the most ever. */
  inHeld: number;
  maxInHeld: number;
}
