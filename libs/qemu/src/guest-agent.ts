import net from 'node:net';
import { randomInt } from 'node:crypto';
import { DeadlineError, pollUntil } from '@forky/base';
import { BoundedLineSplitter, OverlongLine } from './lines.js';
import { ExecOutputTooLargeError, GuestAgentError, ProtocolError, QmpClosedError, ReplyTooLargeError } from './errors.js';
import { connectUnix } from './socket.js';

export interface ExecOutput {
  exitCode: number;
  stdout: string;
  stderr: string;
}

const SYNC_BYTE = 0xff;
/**
 * The longest agent reply line read; the rest of a longer one is discarded as it streams in.
 * guest-exec-status carries a command's whole output base64 in one line (qemu-ga keeps up to
 * 16 MiB of it): unbounded, one 50 MB exec held ~100 MB in hostd. Output past ~1 MiB cannot be
 * answered anyway (NATS max_payload is 1 MiB); 2 MiB of base64 is 1.5 MiB of output, above that.
 */
export const MAX_REPLY_LINE = 2 << 20;
/** Lines waiting unread: the agent answers one per request, so more is a guest talking out of turn. */
const MAX_QUEUED_LINES = 16;

/**
 * A client of the QEMU guest agent protocol (QGA) over the host side of its virtio-serial channel.
 * QGA answers in order and has no ids, so calls are queued one at a time. The channel may hold
 * stale bytes (a guest that restarted its agent, a VM restored from a snapshot): `sync()` sends
 * 0xFF, which resets the agent's parser, and a guest-sync-delimited whose reply follows a 0xFF;
 * everything before it is discarded. After a call times out the stream is out of step, so the
 * next call resyncs first.
 */
export class GuestAgentClient {
  #sock: net.Socket;
  #splitter = new BoundedLineSplitter(MAX_REPLY_LINE);
  #lines: Array<Buffer | OverlongLine> = [];
  #wake: (() => void) | undefined;
  #closed: Error | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #inSync = false;
  #seekingSync = false;

  private constructor(sock: net.Socket, reads: { to?: (chunk: Buffer) => void }) {
    this.#sock = sock;
    reads.to = (chunk) => this.#onData(chunk);
    const onEnd = (e?: Error): void => {
      this.#closed ??= new QmpClosedError('guest agent', e);
      this.#wake?.();
    };
    sock.on('error', onEnd);
    sock.on('close', () => onEnd());
  }

  /** Connects to the host side of the agent channel (a chardev socket with `server=on`). */
  static async connect(path: string, timeoutMs = 5000): Promise<GuestAgentClient> {
    // Reads go to one reused buffer: a huge reply being discarded allocates nothing.
    const reads: { to?: (chunk: Buffer) => void } = {};
    const early: Buffer[] = [];
    const sock = await connectUnix(path, timeoutMs, 'guest agent', (chunk) =>
      reads.to ? reads.to(chunk) : early.push(Buffer.from(chunk)),
    );
    const client = new GuestAgentClient(sock, reads);
    for (const chunk of early) reads.to?.(chunk);
    return client;
  }

  /**
   * Resolves once the agent answers a sync, resending every `attemptMs` until `timeoutMs`
   * (a booting guest opens its end of the channel only when its agent starts).
   */
  sync(timeoutMs: number, attemptMs = 250): Promise<void> {
    return this.#serial(() => this.#doSync(timeoutMs, attemptMs));
  }

  async #doSync(timeoutMs: number, attemptMs = 250): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let latest = 0;
    for (;;) {
      this.#check();
      latest = randomInt(1, 2 ** 31);
      this.#seekingSync = true;
      this.#splitter.reset();
      this.#lines = [];
      this.#sock.write(Buffer.concat([Buffer.from([SYNC_BYTE]), jsonLine({ execute: 'guest-sync-delimited', arguments: { id: latest } })]));
      const attemptEnd = Math.min(deadline, Date.now() + attemptMs);
      // Older attempts' replies come first (the agent answers in order); wait for ours.
      for (;;) {
        const line = await this.#nextLine(attemptEnd).catch(() => undefined);
        if (line === undefined) break;
        if (line instanceof OverlongLine) continue;
        const msg = parse(line);
        if (msg.return === latest) {
          this.#inSync = true;
          return;
        }
        this.#seekingSync = true;
      }
      if (Date.now() >= deadline) throw new DeadlineError('guest agent sync', timeoutMs);
    }
  }

  /** One agent command. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    return this.#serial(async () => {
      if (!this.#inSync) await this.#doSync(timeoutMs);
      this.#sock.write(jsonLine(args === undefined ? { execute: command } : { execute: command, arguments: args }));
      try {
        const line = await this.#nextLine(Date.now() + timeoutMs);
        // Discarded whole, up to its newline: the stream is still in step.
        if (line instanceof OverlongLine) throw new ReplyTooLargeError(command, MAX_REPLY_LINE, line.bytes);
        const msg = parse(line);
        if (msg.error) {
          const e = msg.error as { class?: string; desc?: string };
          throw new GuestAgentError(command, e.class ?? 'Unknown', e.desc ?? '');
        }
        return msg.return as T;
      } catch (e) {
        if (!(e instanceof GuestAgentError || e instanceof ReplyTooLargeError)) this.#inSync = false;
        throw e instanceof DeadlineError ? new DeadlineError(`guest agent ${command}`, timeoutMs) : e;
      }
    });
  }

  /**
   * Runs a program in the guest (PATH is searched) and returns its exit code and output.
   * Output (stdout and stderr, as UTF-8) over `maxOutputBytes`, or an agent reply over
   * MAX_REPLY_LINE, fails the exec with an ExecOutputTooLargeError.
   */
  async exec(cmd: readonly string[], opts: { input?: string; timeoutMs?: number; maxOutputBytes?: number } = {}): Promise<ExecOutput> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    const [path = '', ...arg] = cmd;
    const started = await this.execute<unknown>('guest-exec', {
      path,
      arg,
      'capture-output': true,
      ...(opts.input === undefined ? {} : { 'input-data': Buffer.from(opts.input).toString('base64') }),
    });
    const pid = (started as { pid?: unknown } | null)?.pid;
    if (!Number.isSafeInteger(pid))
      throw new ProtocolError(`guest agent: guest-exec returned no pid: ${JSON.stringify(started)?.slice(0, 200)}`);
    let st: ExecStatus;
    try {
      st = await pollUntil(
        async () => {
          const s = execStatus(await this.execute<unknown>('guest-exec-status', { pid }, Math.max(1, deadline - Date.now())));
          return s.exited ? s : undefined;
        },
        { timeoutMs, intervalMs: 2, maxIntervalMs: 50, what: `guest exec ${path}` },
      );
    } catch (e) {
      // The agent reports output only once the command has exited, and then forgets it.
      if (e instanceof ReplyTooLargeError)
        throw new ExecOutputTooLargeError(path, `as the guest agent's base64 reply, ${e.bytes} bytes`, e.limitBytes, e);
      // Best effort: do not leave a runaway command behind in the guest.
      await this.execute('guest-exec', { path: 'kill', arg: ['-9', String(pid)] }, 2000).catch(() => undefined);
      throw e;
    }
    const stdout = Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8');
    const stderr = Buffer.from(st['err-data'] ?? '', 'base64').toString('utf8');
    const max = opts.maxOutputBytes ?? Infinity;
    const bytes = Buffer.byteLength(stdout) + Buffer.byteLength(stderr);
    if (bytes > max) throw new ExecOutputTooLargeError(path, `${bytes} bytes of stdout and stderr`, max);
    return { exitCode: st.exitcode ?? 128 + (st.signal ?? 0), stdout, stderr };
  }

  close(): void {
    this.#sock.destroy();
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #check(): void {
    if (this.#closed) throw this.#closed;
  }

  #onData(chunk: Buffer): void {
    try {
      if (this.#seekingSync) {
        // Everything before the sync byte is stale: replies to requests nobody waits for.
        const at = chunk.lastIndexOf(SYNC_BYTE);
        if (at === -1) return;
        this.#seekingSync = false;
        this.#splitter.reset();
        chunk = chunk.subarray(at + 1);
      }
      this.#lines.push(...this.#splitter.push(chunk));
      if (this.#lines.length > MAX_QUEUED_LINES) {
        // Nobody waits for these: drop them, and resync before the next command.
        this.#lines = [];
        this.#inSync = false;
      }
    } catch (e) {
      this.#closed = new ProtocolError(`guest agent: ${(e as Error).message}`, e);
      this.#sock.destroy();
    }
    this.#wake?.();
  }

  async #nextLine(deadline: number): Promise<Buffer | OverlongLine> {
    for (;;) {
      const line = this.#lines.shift();
      if (line) return line;
      this.#check();
      const left = deadline - Date.now();
      if (left <= 0) throw new DeadlineError('guest agent reply', 0);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }
}

type ExecStatus = { exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string };

/** guest-exec-status's reply, checked: it comes from the guest. */
function execStatus(v: unknown): ExecStatus {
  const s = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const int = (k: string): boolean => s[k] === undefined || Number.isSafeInteger(s[k]);
  const text = (k: string): boolean => s[k] === undefined || typeof s[k] === 'string';
  if (typeof s.exited !== 'boolean' || !int('exitcode') || !int('signal') || !text('out-data') || !text('err-data')) {
    throw new ProtocolError(`guest agent: guest-exec-status reply is malformed: ${JSON.stringify(v)?.slice(0, 200)}`);
  }
  return s as ExecStatus;
}

function jsonLine(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v) + '\n');
}

function parse(line: Buffer): Record<string, unknown> {
  try {
    return JSON.parse(line.toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new ProtocolError(`guest agent sent a line that is not JSON: ${line.toString('utf8').slice(0, 200)}`, e);
  }
}
