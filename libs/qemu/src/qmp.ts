import net from 'node:net';
import { DeadlineError, withDeadline } from '@forky/base';
import { LineSplitter } from './lines.js';
import { ProtocolError, QmpClosedError, QmpCommandError } from './errors.js';
import { connectUnix } from './socket.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpOptions {
  /** Deadline for a command with no deadline of its own. */
  commandTimeoutMs?: number;
  /** Deadline for the greeting and capability negotiation. */
  handshakeTimeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A QMP client over a connected stream: greeting and capability negotiation, an id on every
 * command, a deadline on every command, events as listeners or an async stream. When the socket
 * closes, every pending call is rejected; a line that is not JSON is fatal.
 */
export class QmpClient {
  readonly version: QmpVersion;
  readonly closed: Promise<Error | undefined>;
  #sock: net.Socket;
  #pending = new Map<string, Pending>();
  #listeners = new Set<(e: QmpEvent) => void>();
  #nextId = 1;
  #closeError: Error | undefined;
  #isClosed = false;
  #timeoutMs: number;

  private constructor(sock: net.Socket, version: QmpVersion, closed: Promise<Error | undefined>, timeoutMs: number) {
    this.#sock = sock;
    this.version = version;
    this.closed = closed;
    this.#timeoutMs = timeoutMs;
  }

  /** Connects to a QMP server socket (QEMU started with `server=on`). */
  static async connect(path: string, opts: QmpOptions = {}): Promise<QmpClient> {
    const sock = await connectUnix(path, opts.handshakeTimeoutMs ?? 5000, 'QMP');
    return QmpClient.handshake(sock, opts);
  }

  /** Negotiates on a socket that is already connected (QEMU connected to us with `server=off`). */
  static async handshake(sock: net.Socket, opts: QmpOptions = {}): Promise<QmpClient> {
    const splitter = new LineSplitter();
    let client: QmpClient | undefined;
    let greetingResolve!: (v: QmpVersion) => void;
    let greetingReject!: (e: Error) => void;
    const greeting = new Promise<QmpVersion>((res, rej) => {
      greetingResolve = res;
      greetingReject = rej;
    });
    let closedResolve!: (e: Error | undefined) => void;
    const closed = new Promise<Error | undefined>((res) => (closedResolve = res));

    const fail = (err: Error): void => {
      greetingReject(err);
      client?.shutdown(err);
      sock.destroy();
    };
    sock.on('data', (chunk: Buffer) => {
      let lines: Buffer[];
      try {
        lines = splitter.push(chunk);
      } catch (e) {
        return fail(new ProtocolError(`QMP: ${(e as Error).message}`, e));
      }
      for (const line of lines) {
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line.toString('utf8')) as Record<string, unknown>;
        } catch (e) {
          return fail(new ProtocolError(`QMP sent a line that is not JSON: ${line.toString('utf8').slice(0, 200)}`, e));
        }
        if (!client) {
          const v = (msg.QMP as { version?: QmpVersion } | undefined)?.version;
          if (!v) return fail(new ProtocolError(`QMP greeting expected, got ${line.toString('utf8').slice(0, 200)}`));
          greetingResolve(v);
          continue;
        }
        client.dispatch(msg);
      }
    });
    sock.on('error', (e) => {
      greetingReject(e);
      client?.shutdown(new QmpClosedError('QMP', e));
    });
    sock.on('close', () => {
      const err = new QmpClosedError('QMP');
      greetingReject(err);
      client?.shutdown(err);
      closedResolve(client ? client.#closeError : undefined);
    });

    const timeoutMs = opts.handshakeTimeoutMs ?? 5000;
    try {
      const version = await withDeadline(greeting, timeoutMs, 'QMP greeting');
      client = new QmpClient(sock, version, closed, opts.commandTimeoutMs ?? 10_000);
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (e) {
      sock.destroy();
      throw e;
    }
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.#isClosed) return Promise.reject(this.#closeError ?? new QmpClosedError(`QMP ${command}`));
    const id = `f${this.#nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new DeadlineError(`QMP ${command}`, timeoutMs));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.#sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Calls `fn` for every event until the returned function is called. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /**
   * Resolves with the first event named `name` that passes `match`. Call it before the command
   * that causes the event, so the event cannot be missed.
   */
  waitForEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = this.#timeoutMs): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new DeadlineError(`QMP event ${name}`, timeoutMs));
      }, timeoutMs);
      const off = this.onEvent((e) => {
        if (e.event === name && match(e)) {
          clearTimeout(timer);
          off();
          resolve(e);
        }
      });
      void this.closed.then(() => {
        clearTimeout(timer);
        off();
        reject(this.#closeError ?? new QmpClosedError(`QMP event ${name}`));
      });
    });
  }

  /**
   * Events as an async stream, from this call on (the listener is registered now, not at the
   * first `next()`); ends when the connection closes.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    const off = this.onEvent((e) => {
      queue.push(e);
      wake?.();
    });
    void this.closed.then(() => wake?.());
    const it: AsyncIterableIterator<QmpEvent> = {
      next: async () => {
        for (;;) {
          const e = queue.shift();
          if (e) return { value: e, done: false };
          if (this.#isClosed) {
            off();
            return { value: undefined, done: true };
          }
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      },
      return: async () => {
        off();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  close(): void {
    this.#sock.end();
    this.#sock.destroy();
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      for (const fn of [...this.#listeners]) fn(msg as unknown as QmpEvent);
      return;
    }
    const id = msg.id;
    const p = typeof id === 'string' ? this.#pending.get(id) : undefined;
    if (!p) return; // a reply to a call that already timed out
    this.#pending.delete(id as string);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, err.class ?? 'Unknown', err.desc ?? ''));
    } else {
      p.resolve(msg.return);
    }
  }

  private shutdown(err: Error): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#closeError = err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
    this.#sock.destroy();
  }
}
