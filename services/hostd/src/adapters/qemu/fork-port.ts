import net from 'node:net';
import { ForkyError, type Logger } from '@forky/base';
import { SELF_FORK_LINE_MAX } from '@forky/contract';
import type { SelfForkLine } from '../../domain/ports.js';

/**
 * Splits what a guest sends into lines of at most `max` bytes (without the newline). A line that
 * grows past `max` is given once as `tooLong` and the rest of it, up to its newline, is dropped:
 * at most `max` bytes are ever held, whatever the guest sends. Empty lines are skipped.
 */
export class LineReader {
  #held: Buffer[] = [];
  #heldBytes = 0;
  /** Inside a line already reported too long: everything up to the next newline is dropped. */
  #dropping = false;

  constructor(private readonly max: number = SELF_FORK_LINE_MAX) {}

  push(chunk: Buffer): SelfForkLine[] {
    const out: SelfForkLine[] = [];
    let from = 0;
    while (from < chunk.length) {
      const nl = chunk.indexOf(0x0a, from);
      const end = nl < 0 ? chunk.length : nl;
      if (!this.#dropping) {
        const piece = chunk.subarray(from, end);
        if (this.#heldBytes + piece.length > this.max) {
          this.#reset();
          this.#dropping = true;
          out.push({ tooLong: true });
        } else if (piece.length > 0) {
          this.#held.push(Buffer.from(piece));
          this.#heldBytes += piece.length;
        }
      }
      if (nl < 0) break;
      if (!this.#dropping && this.#heldBytes > 0) out.push({ line: Buffer.concat(this.#held).toString('utf8') });
      this.#reset();
      this.#dropping = false;
      from = nl + 1;
    }
    return out;
  }

  #reset(): void {
    this.#held = [];
    this.#heldBytes = 0;
  }
}

/** Lines kept waiting at most (the socket is paused meanwhile; one read gives at most 64 KiB). */
const QUEUE_MAX = 8;

/**
 * hostd's end of one VM process's self-fork port (org.forky.fork.0, a unix-socket chardev).
 * Connected before the process loads any state, so a restored guest blocked reading it never
 * sees the host go away. Lines go to `deliver` one at a time: the socket is not read again
 * until the last one has been dealt with, so a guest that floods the port only fills its own
 * virtqueue (QEMU stops taking from it), never hostd's memory.
 */
export class ForkPort {
  readonly #reader = new LineReader();
  readonly #queue: SelfForkLine[] = [];
  #draining = false;
  #closed = false;

  private constructor(
    private readonly sock: net.Socket,
    private readonly deliver: (line: SelfForkLine) => Promise<void>,
    private readonly log: Logger,
  ) {
    sock.on('data', (d: Buffer) => {
      this.#queue.push(...this.#reader.push(d));
      // The guest program sends one line and waits: lines past a few at once get no answer.
      if (this.#queue.length > QUEUE_MAX) this.#queue.length = QUEUE_MAX;
      void this.#drain();
    });
    sock.on('error', (err) => this.log.debug({ err }, 'self-fork port error'));
    sock.on('close', () => (this.#closed = true));
  }

  static connect(socketPath: string, deliver: (line: SelfForkLine) => Promise<void>, log: Logger, timeoutMs: number): Promise<ForkPort> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(socketPath);
      const timer = setTimeout(
        () => fail(new ForkyError('TIMEOUT', `self-fork port ${socketPath}: no connection within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const fail = (e: Error): void => {
        clearTimeout(timer);
        sock.destroy();
        reject(e instanceof ForkyError ? e : new ForkyError('QEMU', `self-fork port ${socketPath}: ${e.message}`, { cause: e }));
      };
      sock.once('error', fail);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.off('error', fail);
        resolve(new ForkPort(sock, deliver, log));
      });
    });
  }

  /** Writes one line to the guest; rejects if the process is gone. */
  write(line: string): Promise<void> {
    if (this.#closed || this.sock.destroyed) return Promise.reject(new ForkyError('QEMU', 'the self-fork port is closed'));
    return new Promise((resolve, reject) =>
      this.sock.write(`${line}\n`, (err) =>
        err ? reject(new ForkyError('QEMU', `self-fork port write: ${err.message}`, { cause: err })) : resolve(),
      ),
    );
  }

  close(): void {
    this.#closed = true;
    this.sock.destroy();
  }

  async #drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    this.sock.pause();
    try {
      for (let l = this.#queue.shift(); l && !this.#closed; l = this.#queue.shift())
        await this.deliver(l).catch((err: unknown) => this.log.warn({ err }, 'self-fork line handler failed'));
    } finally {
      this.#draining = false;
      if (!this.#closed) this.sock.resume();
    }
  }
}
