import { ForkyError, ValidationError, asForkyError, type ErrorCode } from '@forky/base';
import { ErrorCodes } from '@forky/base';
import type { StreamChunk, StreamEnd } from '@forky/bus';
import { ResizeBody } from '@forky/contract';
import { HandOvers } from './hand-over.js';
import type { Calls, StreamLike } from './transport.js';

/** The host's chunks are at most 64 KiB; ours too, so one `in` message never exceeds what it takes. */
const CHUNK = 64 * 1024;

/** One piece of a process's output, as it came. */
export interface OutputChunk {
  stream: 'stdout' | 'stderr';
  bytes: Uint8Array;
}

/**
 * How a process ended: its exit code, or the signal that killed it, or its deadline. Both
 * `exitCode` and `signal` null: the output ended before the process did (an attach without
 * `follow`, or `detach()`).
 */
export interface ProcessExit {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** Ended by kill() or an AbortSignal. */
  cancelled: boolean;
}

/** A stream event as the guest sent it (`dropped`, `started`…): its values are the guest's, unchecked. */
export type StreamEvent = { type: string } & Record<string, unknown>;

/** @internal How a Process was begun, and what it is told besides output. */
export interface ProcessOptions {
  signal?: AbortSignal;
  /** Begun by `proc.attach` of this pid: kill() signals it by pid, detach() leaves it running. */
  attached?: { pid: number; follow: boolean };
  /** Every event of its streams, as the guest sent it (escape before showing). */
  onEvent?: (event: StreamEvent) => void;
  /** Started on a PTY: resize() may send the terminal's size. */
  pty?: boolean;
}

/** A terminal size as the contract bounds it (whole numbers 1–1000), or a typed error naming the field. */
export function checkSize(size: unknown, prefix = ''): { rows: number; cols: number } {
  const s = (size ?? {}) as { rows?: unknown; cols?: unknown };
  const r = ResizeBody.safeParse({ rows: s.rows, cols: s.cols });
  if (r.success) return r.data;
  const field = `${prefix}${String(r.error.issues[0]?.path[0] ?? 'rows')}`;
  throw new ValidationError(`${field}: a whole number from 1 to 1000`, { field });
}

/** A stream that ended because the VM's agent session did (a snapshot's hand-over), not its process. */
const endedWithSession = (end: StreamEnd): boolean => !end.ok && end.code === 'GONE';

/** A failed stream end as the error it stands for (an agent's own codes, EXISTS, IS_DIR…, keep their name in the message). */
export function endError(end: { code: string; message: string }): ForkyError {
  const code: ErrorCode = end.code in ErrorCodes ? (end.code as ErrorCode) : 'INVALID_STATE';
  return new ForkyError(code, code === end.code ? end.message : `${end.code}: ${end.message}`, { details: { guestCode: end.code } });
}

/**
 * A process in a VM (`vm.spawn`, `vm.attach`): its output as an async iterator of chunks (both
 * channels, in the order they came), its stdin, and its exit. A snapshot of the VM (a live fork)
 * hands the VM to a new QEMU process and ends the stream while the process runs on: the output is
 * followed again by pid from where it was, so a reader sees each byte once. Reading slowly slows
 * the guest, not our memory.
 */
export class Process implements AsyncIterable<OutputChunk> {
  readonly #t: Calls;
  readonly #vm: string;
  readonly #pid: number | undefined;
  readonly #attached: boolean;
  readonly #follow: boolean;
  readonly #onEvent: ((event: StreamEvent) => void) | undefined;
  readonly #pty: boolean;
  #stream: StreamLike;
  /** The current stream is a `proc.attach` (begun so, or followed again after a hand-over): cancelling it kills nothing. */
  #onAttach: boolean;
  #seen = 0;
  #skip = 0;
  #exit: ProcessExit | undefined;
  #failed: ForkyError | undefined;
  #reading = false;
  #cancelled = false;
  #detached = false;
  readonly #handOvers = new HandOvers();
  readonly #done: Promise<ProcessExit>;
  #resolve!: (e: ProcessExit) => void;
  #reject!: (e: unknown) => void;

  /** Output bytes the guest dropped before they were read (it keeps the last 1 MiB of a process's output). */
  lostBytes = 0;

  /** @internal */
  constructor(t: Calls, vm: string, stream: StreamLike, o: ProcessOptions = {}) {
    this.#t = t;
    this.#vm = vm;
    this.#stream = stream;
    this.#pid = stream.pid ?? o.attached?.pid;
    this.#attached = o.attached !== undefined;
    this.#onAttach = this.#attached;
    this.#follow = o.attached?.follow ?? true;
    this.#onEvent = o.onEvent;
    this.#pty = o.pty === true;
    this.#done = new Promise((res, rej) => ((this.#resolve = res), (this.#reject = rej)));
    this.#done.catch(() => undefined);
    const signal = o.signal;
    if (signal) {
      // Giving up a process we only attached to stops following it; one we started is killed.
      const onAbort = (): void => (this.#attached ? this.detach() : this.kill());
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      void this.#done.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => undefined);
    }
  }

  /** The process id in the guest. */
  get pid(): number | undefined {
    return this.#pid;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    if (this.#reading) throw new ForkyError('INVALID_STATE', 'a process is read by one reader');
    this.#reading = true;
    try {
      for (;;) {
        let end: StreamEnd | undefined;
        for await (const c of this.#stream as AsyncIterable<StreamChunk>) {
          if (c.kind === 'end') {
            end = c.end;
            break;
          }
          if (c.kind === 'event') this.#event(c.event);
          if (c.kind !== 'stdout' && c.kind !== 'stderr') continue;
          const fresh = this.#fresh(c.bytes);
          if (fresh.length > 0) yield { stream: c.kind, bytes: fresh };
        }
        if (!end) throw this.#fail(new ForkyError('UNAVAILABLE', `the output of process ${this.#pid ?? '?'} ended without its exit`));
        if (endedWithSession(end) && !this.#detached && this.#pid !== undefined) {
          this.#stream.close();
          this.#stream = await this.#reattach();
          // Killed or left while the VM was handed over: done now, on the new stream.
          if (this.#detached) this.#stream.cancel();
          else if (this.#cancelled) this.#killByPid();
          continue;
        }
        if (!end.ok) throw this.#fail(endError(end));
        const exit: ProcessExit = {
          exitCode: end.exitCode ?? null,
          signal: end.signal ?? null,
          timedOut: end.timedOut === true,
          cancelled: end.cancelled === true || this.#cancelled,
        };
        // Followed after a hand-over until it exits: an end without the exit is not one to report as 0.
        if (!this.#attached && this.#onAttach && exit.exitCode === null && exit.signal === null && !exit.cancelled)
          throw this.#fail(
            new ForkyError('UNAVAILABLE', `process ${this.#pid} was followed again after a snapshot, but its exit was not seen`),
          );
        this.#exit = exit;
        this.#resolve(exit);
        return;
      }
    } catch (e) {
      throw this.#fail(asForkyError(e));
    } finally {
      if (!this.#exit && !this.#failed) {
        // Left before its end (a break, a throw): as a stream's loop left, the work stops now.
        if (this.#attached) this.#stream.cancel();
        else this.kill();
        this.#fail(new ForkyError('INVALID_STATE', 'the process was left before it exited'));
      }
      this.#stream.close();
    }
  }

  /** Resolves with the exit once the output has been read to its end (by a reader, or by wait()). */
  async wait(): Promise<ProcessExit> {
    if (!this.#reading) for await (const _ of this) void _;
    return this.#done;
  }

  /** Writes to the process's stdin (it must have been started with `stdin: true`). */
  async write(data: string | Uint8Array): Promise<void> {
    const b = typeof data === 'string' ? Buffer.from(data) : data;
    for (let i = 0; i < b.length; i += CHUNK) await this.#stream.write(b.subarray(i, i + CHUNK));
  }

  /**
   * Sets the size of its terminal (a process spawned with `pty`); the guest gets the latest size at
   * most every 50 ms. False when it could not be sent: after a snapshot's hand-over the process is
   * followed by pid, on a stream that has no terminal, and keeps the size it had.
   */
  resize(rows: number, cols: number): boolean {
    const size = checkSize({ rows, cols });
    if (!this.#pty) throw new ForkyError('INVALID_STATE', 'the process has no terminal: spawn it with `pty`');
    // A resize on a stream without a PTY ends it (PROTOCOL): never sent on a follow-up attach.
    if (this.#onAttach || !this.#stream.resize) return false;
    this.#stream.resize(size.rows, size.cols);
    return true;
  }

  /** Ends its stdin. */
  closeStdin(): Promise<void> {
    return this.#stream.closeInput();
  }

  /** Kills the process group in the guest; its exit still comes, `cancelled`. */
  kill(): void {
    this.#cancelled = true;
    if (this.#onAttach) this.#killByPid();
    else this.#stream.cancel();
  }

  /** Stops following a process begun by `vm.attach()`: its output ends here, the process runs on. */
  detach(): void {
    if (!this.#attached)
      throw new ForkyError('INVALID_STATE', 'a spawned process ends with its stream: kill() it, or start it detached and attach to it');
    this.#detached = true;
    this.#stream.cancel();
  }

  /** Cancelling an attach only stops the following: the process is killed by pid, and its exit comes on the stream. */
  #killByPid(): void {
    if (this.#pid === undefined) return this.#stream.cancel();
    this.#t.call('proc.signal', { id: this.#vm, pid: this.#pid, signal: 'KILL' }).catch((e: unknown) => {
      // NOT_FOUND: it has exited, and that exit is on its way.
      if (asForkyError(e).code !== 'NOT_FOUND') this.#stream.cancel();
    });
  }

  #event(e: StreamEvent): void {
    if (e.type === 'dropped') {
      const n = Number(e.bytes);
      // The guest's count: a value that is no byte count is not believed.
      if (Number.isSafeInteger(n) && n >= 0) this.#dropped(n);
    }
    this.#onEvent?.(e);
  }

  /** Bytes of output not seen before a hand-over (the process's buffer replays from its start). */
  #fresh(bytes: Uint8Array): Uint8Array {
    const skip = this.#skip;
    if (skip >= bytes.length) {
      this.#skip -= bytes.length;
      return new Uint8Array(0);
    }
    this.#skip = 0;
    const rest = skip > 0 ? bytes.subarray(skip) : bytes;
    this.#seen += rest.length;
    return rest;
  }

  /** The guest kept only the last part of the output: what it replays starts at byte `dropped`. */
  #dropped(dropped: number): void {
    if (dropped > this.#seen) this.lostBytes += dropped - this.#seen;
    this.#skip = Math.max(0, this.#seen - dropped);
    this.#seen = Math.max(this.#seen, dropped);
  }

  async #reattach(): Promise<StreamLike> {
    const body = { id: this.#vm, pid: this.#pid as number, follow: this.#follow };
    const st = await this.#handOvers.reopen(() => this.#t.stream('proc.attach', body), `process ${this.#pid}`);
    this.#skip = this.#seen;
    this.#onAttach = true;
    return st;
  }

  #fail(e: ForkyError): ForkyError {
    if (!this.#failed && !this.#exit) {
      this.#failed = e;
      this.#reject(e);
    }
    return e;
  }
}
