import { ForkyError, newId } from '@forky/base';
import { Process, checkSize, type ProcessExit, type StreamEvent } from './process.js';
import type { CallOptions, Calls } from './transport.js';

export interface SpawnOptions extends CallOptions {
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Keep stdin open for write() (default: no stdin; with `pty`, stdin). */
  stdin?: boolean;
  /**
   * Run it on a pseudo-terminal of this size (whole numbers 1–1000): stdin is written raw to the
   * terminal (Ctrl-C is byte 3), stdout and stderr come merged as stdout, and `resize()` changes the size.
   */
  pty?: { rows: number; cols: number };
  /** The command's deadline in the guest, 0 for none (default 0 for spawn, 60 s for exec); past it the process group is killed. */
  timeoutMs?: number;
  /** The start's idempotency key (default: a new one); the same key again joins the first run, never starts a second. */
  key?: string;
  /** Every stream event, as the guest sent it (escape before showing). */
  onEvent?: (event: StreamEvent) => void;
}

export interface AttachOptions extends Pick<CallOptions, 'signal'> {
  /** Go on with what comes until the process exits (default); else only what the guest kept of its output. */
  follow?: boolean;
  /** Every stream event, as the guest sent it (`dropped`: output lost off the buffer's front). */
  onEvent?: (event: StreamEvent) => void;
}

export interface ExecOptions extends Omit<SpawnOptions, 'stdin'> {
  /** No terminal for exec (use spawn with `pty`, or vm.pty()). */
  pty?: never;
  /** Given whole to the command's stdin, then EOF. */
  stdin?: string | Uint8Array;
  /** Each piece of stdout as it comes (text, decoded as UTF-8 across chunk boundaries). */
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  /** Most bytes of stdout plus stderr kept for the result (default 16 MiB); past it the command is killed and the call fails with CAPACITY. */
  maxOutputBytes?: number;
}

/** vm.pty(): a terminal's size, and what spawn takes besides. */
export interface PtyOptions extends Omit<SpawnOptions, 'pty' | 'stdin'> {
  rows: number;
  cols: number;
}

/** What vm.pty() runs when given no command: a login shell. */
export const DEFAULT_PTY_CMD: readonly string[] = ['/bin/sh', '-l'];

export interface ExecResult extends ProcessExit {
  stdout: string;
  stderr: string;
}

const EXEC_TIMEOUT_MS = 60_000;
const MAX_OUTPUT = 16 * 2 ** 20;

/** A command as exec.start takes it: argv for an array, a shell line for a string. */
function command(cmd: string | readonly string[]): { cmd: string[] } | { shell: string } {
  if (typeof cmd === 'string') return { shell: cmd };
  if (cmd.length === 0) throw new ForkyError('BAD_REQUEST', 'cmd is empty', { details: { field: 'cmd' } });
  return { cmd: [...cmd] };
}

/** An `exec.start` body (STREAMS.md): one builder for every way a command is started. */
function startBody(
  vm: string,
  cmd: string | readonly string[],
  o: SpawnOptions,
  detach: boolean,
  keyPrefix: string,
): Record<string, unknown> {
  // Checked here, naming the field, before anything is sent.
  const pty = o.pty === undefined ? undefined : checkSize(o.pty, 'pty.');
  return {
    id: vm,
    ...command(cmd),
    env: o.env ?? {},
    ...(o.cwd ? { cwd: o.cwd } : {}),
    ...(o.user ? { user: o.user } : {}),
    stdin: pty ? o.stdin !== false : o.stdin === true,
    timeoutMs: o.timeoutMs ?? 0,
    detach,
    ...(pty ? { pty } : {}),
    key: o.key ?? newId(keyPrefix, 16),
  };
}

/** Starts a command in VM `vm` under an idempotency key (a lost reply re-sent never starts it twice). */
export async function spawn(t: Calls, vm: string, cmd: string | readonly string[], o: SpawnOptions = {}): Promise<Process> {
  const st = await t.stream('exec.start', startBody(vm, cmd, o, false, 'sdkexec'), o.signal ? { signal: o.signal } : {});
  return new Process(t, vm, st, {
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onEvent ? { onEvent: o.onEvent } : {}),
    pty: o.pty !== undefined,
  });
}

/**
 * Starts `cmd` (default a login shell) on a pseudo-terminal of `rows` × `cols`, TERM=xterm unless
 * `env` names one: a spawn with `pty`, whose process takes raw keys on write() and has resize().
 */
export async function pty(t: Calls, vm: string, cmd: string | readonly string[] | undefined, o: PtyOptions): Promise<Process> {
  const { rows, cols, env, ...rest } = o;
  // The caller named them rows and cols, not pty.rows: the error names them so.
  checkSize({ rows, cols });
  return spawn(t, vm, cmd ?? DEFAULT_PTY_CMD, { ...rest, env: { TERM: 'xterm', ...env }, pty: { rows, cols }, stdin: true });
}

/**
 * Starts a command detached: no stream, it runs on by itself (no deadline unless `timeoutMs`) and
 * its output goes to the guest's buffer of it (its last 1 MiB), for `attach` to read. Its pid.
 */
export async function startDetached(
  t: Calls,
  vm: string,
  cmd: string | readonly string[],
  o: Omit<SpawnOptions, 'stdin' | 'onEvent' | 'pty'> = {},
): Promise<number> {
  const st = await t.stream('exec.start', startBody(vm, cmd, o, true, 'sdkexec'), o.signal ? { signal: o.signal } : {});
  st.close();
  if (st.pid === undefined) throw new ForkyError('UNAVAILABLE', 'the detached command started, but its pid was not told');
  return st.pid;
}

/** Follows a process the guest agent started (a detached one, or one whose exec was left): its output from its buffer on. */
export async function attach(t: Calls, vm: string, pid: number, o: AttachOptions = {}): Promise<Process> {
  if (!Number.isSafeInteger(pid) || pid < 1)
    throw new ForkyError('BAD_REQUEST', 'pid must be a positive whole number', { details: { field: 'pid' } });
  const follow = o.follow !== false;
  const st = await t.stream('proc.attach', { id: vm, pid, follow }, o.signal ? { signal: o.signal } : {});
  return new Process(t, vm, st, {
    attached: { pid, follow },
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onEvent ? { onEvent: o.onEvent } : {}),
  });
}

/** Runs a command to its end: its output streamed to the callbacks and kept for the result. */
export async function exec(t: Calls, vm: string, cmd: string | readonly string[], o: ExecOptions = {}): Promise<ExecResult> {
  const { stdin, onStdout, onStderr, maxOutputBytes = MAX_OUTPUT, ...rest } = o;
  const p = await spawn(t, vm, cmd, { ...rest, timeoutMs: o.timeoutMs ?? EXEC_TIMEOUT_MS, stdin: stdin !== undefined });
  const feeding =
    stdin === undefined
      ? Promise.resolve()
      : p
          .write(stdin)
          .then(() => p.closeStdin())
          // A command may exit before reading all its input: that is its business, not a failure.
          .catch(() => undefined);
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  const kept = { stdout: [] as string[], stderr: [] as string[] };
  const callbacks = { stdout: onStdout, stderr: onStderr };
  let held = 0;
  for await (const c of p) {
    held += c.bytes.length;
    if (held > maxOutputBytes) {
      p.kill();
      throw new ForkyError('CAPACITY', `the command wrote more than ${maxOutputBytes} bytes (maxOutputBytes); it was killed`, {
        details: { field: 'maxOutputBytes' },
      });
    }
    const text = decoders[c.stream].decode(c.bytes, { stream: true });
    kept[c.stream].push(text);
    callbacks[c.stream]?.(text);
  }
  await feeding;
  const exit = await p.wait();
  // Killed because the caller gave up: the call fails with the signal's reason, as fetch does.
  o.signal?.throwIfAborted();
  for (const k of ['stdout', 'stderr'] as const) {
    const tail = decoders[k].decode();
    if (!tail) continue;
    kept[k].push(tail);
    callbacks[k]?.(tail);
  }
  return { ...exit, stdout: kept.stdout.join(''), stderr: kept.stderr.join('') };
}
