import net from 'node:net';
import { ForkyError, type Logger } from '@forky/base';
import { SELF_FORK_LINE_MAX } from '@forky/contract';
import type { SelfForkLine, SelfForkListener } from '../../domain/ports.js';
import { lineId, refusal } from '../../domain/self-fork-lines.js';
import { SelfForkRefusal } from '../../domain/self-fork-tree.js';

/**
 * Splits what a guest sends into lines of at most `max` bytes (without the newline). A line that
 * grows past `max` is given once as `tooLong` and the rest of it, up to its newline, is dropped:
 * at most `max` bytes are ever held, whatever the guest sends. Empty lines are skipped. At most
 * `room` lines are cut from one chunk: past them the rest of it, up to its next newline, is dropped
 * (counted in `dropped`), so a chunk of tiny lines costs no more than a few.
 */
export class LineReader {
  #held: Buffer[] = [];
  #heldBytes = 0;
  /** Inside a line already reported too long: everything up to the next newline is dropped. */
  #dropping = false;
  /** Bytes dropped since the last look (lines past `room`). */
  dropped = 0;
  /** The first line dropped past `room` since the last look, when whole in its chunk: it gets a BUSY reply. */
  overflow: string | undefined;

  constructor(private readonly max: number = SELF_FORK_LINE_MAX) {}

  push(chunk: Buffer, room = Infinity): SelfForkLine[] {
    const out: SelfForkLine[] = [];
    let from = 0;
    while (from < chunk.length) {
      if (out.length >= room) {
        this.dropped += chunk.length - from;
        const nl = chunk.indexOf(0x0a, from);
        if (this.overflow === undefined && !this.#dropping && this.#heldBytes === 0 && nl >= 0 && nl - from <= this.max)
          this.overflow = chunk.subarray(from, nl).toString('utf8');
        this.#reset();
        this.#dropping = true;
        break;
      }
      // A run of newlines (empty lines) is passed over in one tight loop, not line by line.
      if (!this.#dropping && this.#heldBytes === 0) while (from < chunk.length && chunk[from] === 0x0a) from++;
      if (from >= chunk.length) break;
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
 * Bytes a guest may send a second, and save up: past it the socket is paused until the budget is
 * back, so a guest sending only newlines or one endless line cannot keep hostd's loop busy.
 */
export const PORT_BYTES = { perSec: 16 * 1024, burst: 64 * 1024 };
/** A reply the guest does not read within this long: the port is closed (the process keeps running). */
const WRITE_MS = 30_000;

/**
 * hostd's end of one VM process's self-fork port (org.forky.fork.0, a unix-socket chardev).
 * Connected before the process loads any state, so a restored guest blocked reading it never
 * sees the host go away. Lines go to `deliver` in order. One may be carried out at a time while
 * the next are delivered (and refused BUSY at once, or held at the rate); the socket is not read
 * while such a line is dealt with, so a guest that floods the port only fills its own virtqueue
 * (QEMU stops taking from it), never hostd's memory.
 */
export class ForkPort {
  readonly #reader = new LineReader();
  readonly #queue: SelfForkLine[] = [];
  #draining = false;
  /** The line being carried out, if any: the lines after it are delivered meanwhile (BUSY). */
  #current: Promise<void> | undefined;
  #closed = false;
  /** The byte budget: bytes that may still come now (negative: in debt), as of `#at`. */
  #budget: number;
  #at = performance.now();
  #throttle: NodeJS.Timeout | undefined;
  /** Bytes taken from the socket so far (what the budget bounds). */
  received = 0;

  private constructor(
    private readonly sock: net.Socket,
    private readonly deliver: (line: SelfForkLine) => Promise<void>,
    private readonly log: Logger,
    private readonly bytes = PORT_BYTES,
  ) {
    this.#budget = bytes.burst;
    sock.on('data', (d: Buffer) => {
      // The guest program sends one line and waits: lines past a few at once are dropped, unread.
      this.#queue.push(...this.#reader.push(d, QUEUE_MAX - this.#queue.length));
      if (this.#reader.dropped > 0) {
        this.log.info({ bytes: this.#reader.dropped }, 'self-fork port: lines past the queue dropped, with no reply');
        this.#reader.dropped = 0;
      }
      const over = this.#reader.overflow;
      this.#reader.overflow = undefined;
      if (over !== undefined) {
        const busy = new SelfForkRefusal('BUSY', `more than ${QUEUE_MAX} lines at once: this one and the rest were dropped`);
        this.write(JSON.stringify(refusal(lineId({ line: over }), busy))).catch((err: unknown) => this.log.debug({ err }, 'busy reply'));
      }
      this.received += d.length;
      this.#spend(d.length);
      void this.#drain();
    });
    sock.on('error', (err) => this.log.debug({ err }, 'self-fork port error'));
    sock.on('close', () => this.#close());
  }

  /** Takes `n` bytes from the budget; in debt, the socket is paused until it is paid back. */
  #spend(n: number): void {
    const t = performance.now();
    this.#budget = Math.min(this.bytes.burst, this.#budget + ((t - this.#at) * this.bytes.perSec) / 1000) - n;
    this.#at = t;
    if (this.#budget >= 0 || this.#throttle || this.#closed) return;
    this.sock.pause();
    this.#throttle = setTimeout(
      () => {
        this.#throttle = undefined;
        this.#resume();
      },
      Math.ceil((-this.#budget * 1000) / this.bytes.perSec),
    );
    this.#throttle.unref();
  }

  /** Reading goes on only when no line is being dealt with and the budget is not in debt. */
  #resume(): void {
    if (!this.#closed && !this.#draining && !this.#throttle) this.sock.resume();
  }

  #onClose: Array<() => void> = [];

  /** `f` runs once the port is closed (by either end). */
  onClose(f: () => void): void {
    if (this.#closed) f();
    else this.#onClose.push(f);
  }

  #close(): void {
    if (!this.#closed) for (const f of this.#onClose.splice(0)) f();
    this.#closed = true;
    clearTimeout(this.#throttle);
    this.#throttle = undefined;
  }

  static connect(
    socketPath: string,
    deliver: (line: SelfForkLine) => Promise<void>,
    log: Logger,
    timeoutMs: number,
    bytes = PORT_BYTES,
  ): Promise<ForkPort> {
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
        resolve(new ForkPort(sock, deliver, log, bytes));
      });
    });
  }

  /** Writes one line to the guest; rejects if the process is gone, or (the port closed) if the guest does not read it in time. */
  write(line: string, timeoutMs = WRITE_MS): Promise<void> {
    if (this.#closed || this.sock.destroyed) return Promise.reject(new ForkyError('QEMU', 'the self-fork port is closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close();
        reject(new ForkyError('TIMEOUT', `self-fork port write: the guest read no reply within ${timeoutMs} ms; port closed`));
      }, timeoutMs);
      this.sock.write(`${line}\n`, (err) => {
        clearTimeout(timer);
        if (err) reject(new ForkyError('QEMU', `self-fork port write: ${err.message}`, { cause: err }));
        else resolve();
      });
    });
  }

  close(): void {
    this.#close();
    this.sock.destroy();
  }

  async #drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    this.sock.pause();
    try {
      for (let l = this.#queue.shift(); l && !this.#closed; l = this.#queue.shift()) {
        const done = this.deliver(l).catch((err: unknown) => this.log.warn({ err }, 'self-fork line handler failed'));
        // A line while one is carried out is dealt with at once (BUSY), or held at the rate: awaited.
        if (this.#current) await done;
        else this.#current = done.finally(() => (this.#current = undefined));
      }
    } finally {
      this.#draining = false;
      this.#resume();
    }
  }
}

/** How long a self-fork port that could not be connected at reattach is tried again. */
export const REATTACH_FORK_MS = 30_000;

/** A runtime's self-fork ports: each one open, and each reattach retry waiting, so close() ends them all. */
export class ForkPorts {
  readonly #open = new Set<ForkPort>();
  readonly #retries = new Set<NodeJS.Timeout>();

  async connect(
    socketPath: string,
    vm: { id: string; generation: number },
    listener: SelfForkListener,
    logger: Logger,
    timeoutMs: number,
  ): Promise<ForkPort> {
    const from = { id: vm.id, generation: vm.generation };
    const log = logger.child({ vm: vm.id, generation: vm.generation, component: 'self-fork' });
    const p = await ForkPort.connect(socketPath, (line) => listener(from, line), log, timeoutMs);
    this.#open.add(p);
    p.onClose(() => this.#open.delete(p));
    return p;
  }

  /**
   * A connect that failed at reattach: logged at warn, then `attempt` again each second until
   * REATTACH_FORK_MS (`attempt` gives false once the process is gone); past it, logged at error.
   */
  retry(err: unknown, attempt: () => false | Promise<void>, log: Logger, everyMs = 1000, forMs = REATTACH_FORK_MS): void {
    log.warn({ err }, 'self-fork port not connected at reattach: trying again; this VM cannot self-fork meanwhile');
    const until = performance.now() + forMs;
    const again = (): void => {
      const t = setTimeout(() => {
        this.#retries.delete(t);
        const a = attempt();
        if (a === false) return;
        a.then(
          () => log.info('self-fork port connected after reattach'),
          (e: unknown) => {
            if (performance.now() < until) return again();
            log.error({ err: e }, `self-fork port not connected within ${forMs} ms of reattach: this VM cannot self-fork`);
          },
        );
      }, everyMs);
      t.unref();
      this.#retries.add(t);
    };
    again();
  }

  /** Retries waiting (for tests). */
  get retrying(): number {
    return this.#retries.size;
  }

  close(): void {
    for (const t of this.#retries) clearTimeout(t);
    this.#retries.clear();
    for (const p of [...this.#open]) p.close();
  }
}
