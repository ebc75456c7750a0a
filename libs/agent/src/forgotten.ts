import { MAX_PAYLOAD } from './frame.js';

/** How many forgotten streams are remembered. */
export const FORGOTTEN_STREAMS = 1024;

/**
 * Streams the host stopped waiting for (a CANCEL unanswered past its grace), with what the agent
 * may still send on them: the DATA credit it held, plus a frame's worth for its EOFs, MSGs and
 * END. Why: an honest agent that stalled flushes that much late, and counting it as invalid could
 * close a healthy session. Beyond the allowance, frames count as invalid again.
 */
export class ForgottenStreams {
  #allowance = new Map<number, number>();

  add(id: number, credit: number): void {
    this.#allowance.set(id, Math.max(0, credit) + MAX_PAYLOAD);
    // Oldest first out (a Map iterates in insertion order).
    if (this.#allowance.size > FORGOTTEN_STREAMS) this.#allowance.delete(this.#allowance.keys().next().value as number);
  }

  /** Whether a frame of `bytes` on `id` is a late one within its allowance; an END uses the allowance up. */
  take(id: number, bytes: number, isEnd: boolean): boolean {
    const left = this.#allowance.get(id);
    if (left === undefined) return false;
    const rest = left - Math.max(1, bytes);
    if (rest < 0 || isEnd) this.#allowance.delete(id);
    return rest >= 0;
  }
}
