import type { Logger } from '@forky/base';
import type { NatsConnection } from '@nats-io/nats-core';
import type { GuestRequest, GuestSession } from '@forky/agent';
import type { GuestEndpoint, ParsedRequestOf, ReplyOf } from '@forky/contract';
import type { StreamLimits } from './registry.js';

export interface GuestStreamsOptions {
  nc: NatsConnection;
  hostId: string;
  /** A running VM's guest agent session (NOT_FOUND, INVALID_STATE, UNAVAILABLE otherwise). */
  guest: (vmId: string) => Promise<GuestSession>;
  log?: Logger;
  limits?: Partial<StreamLimits>;
  /** For tests: a silent client's cancel, the host's keepalive, a cancelled guest's grace. */
  idleMs?: number;
  keepaliveMs?: number;
  cancelGraceMs?: number;
  /** How long an exec's open waits for its pid. */
  startedWaitMs?: number;
  /** How long a stream that never had credit lives (default 90 s: past a client's request timeout). */
  startIdleMs?: number;
  /** A stream's bytes moved: activity of the VM (engine.touch: resumes one its idle rule paused), at most once a second per stream. */
  onActivity?: (vmId: string) => void;
  /** A stream or one-shot call on a VM begins (engine.work): its idle rule waits until the returned function ends it. */
  work?: (vmId: string) => () => void;
  /** One-shot calls at once per VM (CAPACITY beyond). */
  unaryPerVm?: number;
}

export type GuestHandlers = { [E in GuestEndpoint]: (req: ParsedRequestOf<E>) => Promise<ReplyOf<E>> };

export interface OpenSpec {
  vmId: string;
  req: GuestRequest;
  /** The client's receive window (DEFAULT_STREAM_WINDOW when it named none). */
  window: number | undefined;
  takesInput: boolean;
  bytes: 'process' | 'file';
  /** Wait for the first event (an exec's `started`) to answer with the pid. */
  awaitPid: boolean;
  pty?: boolean;
  /** A port connection (`tcp`): counted in the VM's port slots, its guest EOF passed on. */
  port?: boolean;
}
