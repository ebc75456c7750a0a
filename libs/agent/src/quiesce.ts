import { ForkyError } from '@forky/base';
import type { AgentStream } from './stream.js';

/** What the hold needs from its session. */
export interface QuiesceHost {
  isClosed(): boolean;
  /** OPENs sent without OPENED or END, and CANCELs sent without END. */
  unanswered(): number;
  sendOpen(stream: AgentStream): void;
  sendCancel(stream: AgentStream): void;
}

/**
 * Holds OPENs and CANCELs back while a snapshot is taken (PROTOCOL.md, Session start), so that no
 * request sits unread in the frozen RAM, to be carried out again by every child.
 */
export class QuiesceHold {
  #depth = 0;
  #waiters: Array<() => void> = [];
  #opens: AgentStream[] = [];
  #cancels: AgentStream[] = [];

  constructor(private readonly host: QuiesceHost) {}

  get active(): boolean {
    return this.#depth > 0;
  }

  holdOpen(stream: AgentStream): void {
    this.#opens.push(stream);
  }

  holdCancel(stream: AgentStream): void {
    if (!this.#cancels.includes(stream)) this.#cancels.push(stream);
  }

  drop(stream: AgentStream): void {
    this.#opens = this.#opens.filter((s) => s !== stream);
    this.#cancels = this.#cancels.filter((s) => s !== stream);
  }

  /**
   * Resolves once every request sent is answered. At the deadline it lets the held ones go and
   * rejects: a snapshot taken now would freeze the unanswered requests into its children.
   */
  start(timeoutMs: number): Promise<() => void> {
    this.#depth++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (--this.#depth === 0) this.#releaseHeld();
    };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== done);
        const n = this.host.unanswered();
        release();
        reject(
          new ForkyError(
            'UNAVAILABLE',
            `the guest agent did not answer ${n} requests within ${timeoutMs} ms: no snapshot with requests in flight`,
            { details: { unanswered: n, timeoutMs } },
          ),
        );
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(release);
      };
      if (this.host.isClosed() || this.host.unanswered() === 0) done();
      else this.#waiters.push(done);
    });
  }

  /** Called when an answer came (or the session closed). */
  check(): void {
    if (this.#waiters.length === 0 || (!this.host.isClosed() && this.host.unanswered() > 0)) return;
    for (const w of this.#waiters.splice(0)) w();
  }

  clear(): void {
    this.#opens = [];
    this.#cancels = [];
    this.check();
  }

  #releaseHeld(): void {
    if (this.host.isClosed()) return;
    for (const s of this.#opens.splice(0)) this.host.sendOpen(s);
    for (const s of this.#cancels.splice(0)) this.host.sendCancel(s);
  }
}
