import { randomBytes } from 'node:crypto';
import { DeadlineError } from '@forky/base';

/** PINGs in flight, each with a random token the PONG must echo. */
export class Pings {
  #pending = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();

  /** Sends a PING through `send` and resolves on its PONG, or rejects after `timeoutMs`. */
  start(send: (token: Buffer) => void, timeoutMs: number, what: string): Promise<void> {
    const token = randomBytes(8);
    const key = token.toString('hex');
    return new Promise<void>((resolve, reject) => {
      const settle = (fn: () => void): void => {
        clearTimeout(timer);
        this.#pending.delete(key);
        fn();
      };
      const timer = setTimeout(() => settle(() => reject(new DeadlineError(what, timeoutMs))), timeoutMs);
      this.#pending.set(key, { resolve: () => settle(resolve), reject: (e) => settle(() => reject(e)) });
      send(token);
    });
  }

  /** Settles the PING a PONG answers; false if it answers none. */
  answer(payload: Buffer): boolean {
    const ping = this.#pending.get(payload.toString('hex'));
    ping?.resolve();
    return ping !== undefined;
  }

  rejectAll(err: Error): void {
    for (const p of [...this.#pending.values()]) p.reject(err);
  }
}
