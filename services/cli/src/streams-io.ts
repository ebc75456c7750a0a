import fs from 'node:fs';
import os from 'node:os';
import { ErrorCodes, ForkyError } from '@forky/base';
import type { StreamChunk, StreamEnd } from '@forky/bus';
import type { Process, StreamLike } from '@forky/sdk';
import { guestText } from './guest-text.js';

export type { StreamChunk, StreamEnd };

/** What the commands use of @forky/bus's ClientStream (the SDK's, and a PTY's resize); a test passes its own. */
export interface CliStream extends StreamLike {
  resize(rows: number, cols: number): void;
}

/** The host's chunks are at most 64 KiB; ours too, so one `in` message never exceeds what the host takes. */
export const CHUNK = 64 * 1024;

/** Why a local stream takes no more bytes, if it does not: destroyed, ended or failed. */
function closedOut(out: NodeJS.WritableStream): ForkyError | undefined {
  const w = out as NodeJS.WritableStream & { destroyed?: boolean; writableEnded?: boolean; errored?: Error | null };
  if (!w.destroyed && !w.writableEnded && !w.errored) return undefined;
  const why = w.errored ? `: ${w.errored.message}` : '';
  return new ForkyError('INVALID_STATE', `the output is closed${why}`, { cause: w.errored ?? undefined });
}

/**
 * Writes to a local stream and waits when it is full: a slow terminal or disk slows the guest, not our
 * memory. A destination that failed or closed rejects at once (it would fire neither drain nor error).
 */
export async function writeOut(out: NodeJS.WritableStream, bytes: Uint8Array): Promise<void> {
  const before = closedOut(out);
  if (before) throw before;
  if (out.write(bytes)) return;
  const after = closedOut(out);
  if (after) throw after;
  await new Promise<void>((resolve, reject) => {
    const done = (e?: unknown): void => {
      out.off('drain', done);
      out.off('error', done);
      out.off('close', closed);
      if (e) reject(e instanceof ForkyError ? e : new ForkyError('INVALID_STATE', `the output failed: ${String(e)}`, { cause: e }));
      else resolve();
    };
    const closed = (): void => done(closedOut(out) ?? new ForkyError('INVALID_STATE', 'the output is closed'));
    out.once('drain', done);
    out.once('error', done);
    out.once('close', closed);
  });
}

/** The last `max` bytes of what a stream said (a guest's stderr): memory stays bounded whatever it sends. */
export class Tail {
  #b = Buffer.alloc(0);
  constructor(readonly max = 4000) {}

  push(b: Uint8Array): void {
    const all = Buffer.concat([this.#b, b.length > this.max ? b.subarray(b.length - this.max) : b]);
    this.#b = all.length > this.max ? Buffer.from(all.subarray(all.length - this.max)) : all;
  }

  text(): string {
    return this.#b.toString('utf8').trim();
  }
}

/** The exit code of a command Ctrl-C ended, as a shell gives it. */
export const INTERRUPTED_EXIT = 130;

/** Ctrl-C ended the stream: we cancelled it, and it ended cancelled (or failed as it stopped). */
export const wasInterrupted = (end: StreamEnd, interrupted: boolean): boolean => interrupted && (!end.ok || end.cancelled === true);

/** Thrown when Ctrl-C stopped a command; `exitOnInterrupt` turns it into exit 130. */
export class InterruptedError extends ForkyError {
  constructor(message = 'cancelled (Ctrl-C)') {
    super('INVALID_STATE', message);
  }
}

/** Runs a command's body; if Ctrl-C stopped it, says so and sets exit code 130 instead of failing with 1. */
export async function exitOnInterrupt(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof InterruptedError)) throw e;
    process.stderr.write(`forky: ${e.message}\n`);
    process.exitCode = INTERRUPTED_EXIT;
  }
}

/** Where input goes: a stream's `in`, or an SDK process's stdin. */
interface InputSink {
  write(bytes: Uint8Array): Promise<void>;
  closeInput(): Promise<void>;
}

/** Sends a local stream's bytes as the sink's input, then EOF; one write at a time, so the source pauses while the host has no credit. */
export async function pumpIn(src: AsyncIterable<Buffer | string>, sink: InputSink, stop: { stopped: boolean }): Promise<void> {
  for await (const buf of src) {
    const b = typeof buf === 'string' ? Buffer.from(buf) : buf;
    for (let i = 0; i < b.length && !stop.stopped; i += CHUNK) await sink.write(b.subarray(i, i + CHUNK));
    if (stop.stopped) return;
  }
  if (!stop.stopped) await sink.closeInput();
}

/**
 * Feeds `input` (if any) to `sink` while the caller reads: a failure stops the work (`abort`) and is
 * kept for the caller to throw; once `stop` is set, nothing more goes in and nothing is a failure.
 */
function feed(input: AsyncIterable<Buffer | string> | undefined, sink: InputSink, abort: () => void) {
  const stop = { stopped: false };
  let error: unknown;
  const fed = input
    ? pumpIn(input, sink, stop).catch((e: unknown) => {
        if (stop.stopped) return;
        error = e;
        abort();
      })
    : Promise.resolve();
  void fed;
  return {
    failed: (): void => {
      if (error) throw error;
    },
    stop: (): void => void (stop.stopped = true),
  };
}

/**
 * Whether fd 0 carries data to pass on: a pipe or a file (`echo x | forky …`, `< file`). A terminal,
 * /dev/null or a socket nobody writes to is not read, so an interactive run does not wait on it.
 */
export function stdinIsPiped(): boolean {
  if (process.stdin.isTTY) return false;
  try {
    const st = fs.fstatSync(0);
    return st.isFIFO() || st.isFile();
  } catch {
    return false;
  }
}

/**
 * The exit code a stream's end stands for, as a shell would give it: the command's own code,
 * 124 when it ran past its deadline, 128+N when a signal killed it, 130 when we cancelled on Ctrl-C.
 * A failed stream throws its wire error, printed as every other error is.
 */
export function exitCodeOf(end: StreamEnd, interrupted = false): number {
  if (wasInterrupted(end, interrupted)) return INTERRUPTED_EXIT;
  if (!end.ok) throw endError(end);
  if (end.timedOut) return 124;
  if (typeof end.exitCode === 'number') return end.exitCode;
  if (end.signal) return 128 + signalNumber(end.signal);
  return 0;
}

/** A failed end as an error: a code of ours keeps its exit code (BAD_REQUEST: 2), the agent's own (EXISTS, IS_DIR…) print as they are. */
export function endError(end: { code: string; message: string }): Error {
  if (end.code in ErrorCodes) return new ForkyError(end.code as keyof typeof ErrorCodes, end.message);
  return new Error(`${end.code}: ${end.message}`);
}

export function signalNumber(name: string): number {
  const n = (os.constants.signals as Record<string, number>)[`SIG${name.replace(/^SIG/i, '').toUpperCase()}`];
  return n ?? 0;
}

/** One stream of --json output: UTF-8 text when it is valid UTF-8, base64 (and says so) otherwise. */
export function encodeOutput(name: 'stdout' | 'stderr', bytes: Uint8Array): Record<string, string> {
  try {
    return { [name]: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    return { [name]: Buffer.from(bytes).toString('base64'), [`${name}Encoding`]: 'base64' };
  }
}

/** Runs `fn` with Ctrl-C aborting its signal (with an InterruptedError as the reason); a second Ctrl-C exits 130. */
export function abortOnInterrupt<T>(fn: (signal: AbortSignal) => Promise<T>, message?: string): Promise<T> {
  const ac = new AbortController();
  return cancelOnInterrupt({ cancel: () => ac.abort(new InterruptedError(message)) }, () => fn(ac.signal));
}

/**
 * Runs `fn` with Ctrl-C (SIGINT) cancelling `stream` instead of killing us: the host then kills the
 * guest's process group and still sends `end`. A second Ctrl-C gives up waiting and exits 130.
 */
export async function cancelOnInterrupt<T>(stream: { cancel(): void }, fn: (interrupted: () => boolean) => Promise<T>): Promise<T> {
  let count = 0;
  const onInt = (): void => {
    if (++count === 1) stream.cancel();
    else process.exit(130);
  };
  process.on('SIGINT', onInt);
  try {
    return await fn(() => count > 0);
  } finally {
    process.off('SIGINT', onInt);
  }
}

/** Says on stderr that the start of a process's buffered output was lost (it keeps the last 1 MiB). */
export function noteDropped(event: { type: string } & Record<string, unknown>): void {
  if (event.type === 'dropped') process.stderr.write(`forky: ${guestText(event.bytes)} bytes of earlier output were dropped\n`);
}

/**
 * Runs an SDK process to its end (the SDK follows it across a snapshot's hand-over): `input` (if
 * any) as its stdin, its output to `onOutput`, Ctrl-C killing it. Its exit as a stream's end, for
 * exitCodeOf; a failure after Ctrl-C is the interrupt. Input stops at the end.
 */
export async function runProcess(
  p: Process,
  input: (AsyncIterable<Buffer | string> & { destroy?(): void }) | undefined,
  onOutput: (kind: 'stdout' | 'stderr', bytes: Uint8Array) => Promise<void> | void = () => undefined,
): Promise<{ end: StreamEnd; interrupted: boolean }> {
  const fed = feed(input, { write: (b) => p.write(b), closeInput: () => p.closeStdin() }, () => p.kill());
  try {
    return await cancelOnInterrupt({ cancel: () => p.kill() }, async (interrupted) => {
      try {
        for await (const c of p) await onOutput(c.stream, c.bytes);
      } catch (e) {
        if (!interrupted() || !(e instanceof ForkyError)) throw e;
        return { end: { ok: false, code: e.code, message: e.message }, interrupted: true };
      }
      fed.failed();
      const x = await p.wait();
      const end: StreamEnd = {
        ok: true,
        ...(x.exitCode === null ? {} : { exitCode: x.exitCode }),
        ...(x.signal === null ? {} : { signal: x.signal }),
        timedOut: x.timedOut,
        cancelled: x.cancelled,
      };
      return { end, interrupted: interrupted() };
    });
  } finally {
    fed.stop();
    input?.destroy?.();
  }
}
