/**
 * The host's face of a forky-agent session (see ../PROTOCOL.md). hostd's adapters implement it
 * over a VM's agent socket; its NATS bridge and tests speak only to these interfaces.
 */

/** An OPEN request, as PROTOCOL.md names it (the host never sends other fields). */
export type GuestRequest =
  | {
      op: 'exec';
      cmd: string[];
      env?: Record<string, string>;
      cwd?: string;
      user?: string;
      stdin?: boolean;
      timeoutMs?: number;
      detach?: boolean;
      pty?: { rows: number; cols: number };
    }
  | { op: 'attach'; pid: number; follow: boolean }
  | { op: 'ps' }
  | { op: 'signal'; pid: number; signal: GuestSignal }
  | { op: 'read'; path: string; offset?: number; length?: number }
  | { op: 'write'; path: string; mode: 'truncate' | 'create' | 'append'; perm?: number; parents?: boolean }
  | { op: 'list'; path: string }
  | { op: 'stat'; path: string }
  | { op: 'mkdir'; path: string; parents?: boolean; perm?: number }
  | { op: 'remove'; path: string; recursive?: boolean }
  | { op: 'rename'; from: string; to: string }
  | { op: 'watch'; path: string; recursive?: boolean }
  /** A TCP connection to 127.0.0.1:port (then [::1]:port) in the guest: bytes both ways, EOF as half-close. */
  | { op: 'tcp'; port: number };

export type GuestSignal = 'TERM' | 'KILL' | 'INT' | 'HUP' | 'QUIT' | 'USR1' | 'USR2' | 'STOP' | 'CONT';

export interface GuestStat {
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtimeMs: number;
}

export interface GuestProc {
  pid: number;
  cmd: string[];
  detached: boolean;
  pty: boolean;
  running: boolean;
  exitCode: number | null;
  startedAtMs: number;
}

/** A MSG from the agent, validated. */
export type AgentMsg =
  | { type: 'started'; pid: number }
  | { type: 'stat'; stat: GuestStat }
  | { type: 'entries'; entries: { name: string; stat: GuestStat }[] }
  | { type: 'events'; events: { path: string; kind: 'create' | 'modify' | 'delete' | 'move' }[] }
  | { type: 'dropped'; bytes: number };

/** A `tcp` stream's failures, named as the errno they stand for. */
export const TCP_ERROR_CODES = [
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ECONNABORTED',
] as const;
export type TcpErrorCode = (typeof TCP_ERROR_CODES)[number];

export type GuestErrorCode =
  'NOT_FOUND' | 'EXISTS' | 'PERMISSION' | 'NOT_DIR' | 'IS_DIR' | 'NOT_EMPTY' | 'INVALID' | 'BUSY' | 'IO' | 'CANCELLED' | TcpErrorCode;

/**
 * An END from the agent, validated; or one the host made up when the stream could not finish
 * (`PROTOCOL`: the agent broke the protocol on it; `GONE`: the session closed first).
 */
export type AgentEnd =
  | {
      ok: true;
      exitCode?: number;
      signal?: string | null;
      timedOut?: boolean;
      cancelled?: boolean;
      pid?: number;
      bytes?: number;
      processes?: GuestProc[];
      stat?: GuestStat;
    }
  | { ok: false; code: GuestErrorCode | 'PROTOCOL' | 'GONE'; message: string };

/** What a stream yields, in the order the agent sent it; `end` is always last. */
export type GuestEvent =
  | { kind: 'data'; channel: 1 | 2; bytes: Uint8Array }
  | { kind: 'eof'; channel: 1 | 2 }
  | { kind: 'msg'; msg: AgentMsg }
  | { kind: 'end'; end: AgentEnd };

export interface GuestStream {
  readonly id: number;
  /**
   * The agent's events. Pull-based: the session grants the agent credit for bytes only as they
   * are taken from here, so a consumer that stops pulling stops the guest (at most `window`
   * bytes wait in the host). Iterate once; leaving the loop early cancels the stream.
   */
  readonly events: AsyncIterable<GuestEvent>;
  /** Resolves with the END (the agent's or a made-up one); never rejects. */
  readonly ended: Promise<AgentEnd>;
  /** Sends input (channel 0) once the agent has granted credit for it; rejects if the stream ends first. */
  write(bytes: Uint8Array): Promise<void>;
  /** Ends the input (EOF on channel 0). */
  closeInput(): void;
  /** A host → agent MSG (a PTY resize). */
  resize(rows: number, cols: number): void;
  /** Asks the agent to stop the stream's work; `ended` resolves with its END. Idempotent. */
  cancel(): void;
}

export interface GuestSession {
  /** Opens a stream. `window` is the host's receive window for it (default 256 KiB). */
  open(req: GuestRequest, opts?: { window?: number }): GuestStream;
  /** Opens, drains and returns the END (for `ps`, `stat`, `signal`, `mkdir`…): collects MSGs too. */
  call(req: GuestRequest, timeoutMs: number): Promise<{ end: AgentEnd; msgs: AgentMsg[] }>;
  /** A PING answered: the agent runs and reads its port. */
  ping(timeoutMs: number): Promise<void>;
  /**
   * A request answered on this session: the agent holds its HELLO. Unlike a PING, which an agent
   * restarted in the guest answers too (and then ignores everything else until a new HELLO).
   * Rejects UNAVAILABLE after `timeoutMs`. Optional so fakes may leave it out.
   */
  probe?(timeoutMs: number): Promise<void>;
  /** When the agent last sent a good frame (Date.now()); optional so fakes may leave it out. */
  readonly lastHeardMs?: number;
  /**
   * Stops sending OPENs and CANCELs (they wait) and resolves once every one sent has its answer;
   * the returned function lets them go again. If some are still unanswered after `timeoutMs`, it
   * lets them go and rejects UNAVAILABLE: a snapshot must not freeze requests in flight. See PROTOCOL.md.
   */
  quiesce(timeoutMs: number): Promise<() => void>;
  /** Ends the session: every open stream ends with `GONE`. */
  close(): void;
  /** Resolves when the session ends, for whatever reason. */
  readonly closed: Promise<void>;
  /** Who answered the HELLO (its HELLO_ACK's `agent` and `pid`); optional so fakes may leave it out. */
  readonly agent?: { name: string; pid: number };
}
