import type { Logger } from '@forky/base';

/**
 * The scheduler's undo stack, like hostd's (domain/rollback.ts): each step of an operation that
 * made something on a host pushes how to take it back; a failure runs them newest first. A
 * step's `release` drops its undo once the thing is gone or handed over.
 */
export class Undo {
  readonly #steps: Array<{ what: string; undo: () => Promise<unknown> }> = [];

  constructor(
    private readonly log: Logger,
    private readonly about: Record<string, unknown>,
  ) {}

  /** Pushes an undo; the function returned releases it. */
  push(what: string, undo: () => Promise<unknown>): () => void {
    const step = { what, undo };
    this.#steps.push(step);
    return () => {
      const i = this.#steps.indexOf(step);
      if (i >= 0) this.#steps.splice(i, 1);
    };
  }

  /** Undoes every step, newest first; one that fails is logged and the next still runs. */
  async run(): Promise<void> {
    for (let s = this.#steps.pop(); s; s = this.#steps.pop()) {
      try {
        await s.undo();
      } catch (err) {
        this.log.warn({ ...this.about, err, step: s.what }, 'rollback step failed');
      }
    }
  }
}

/** Runs `fn` with an undo stack of its own: if it throws, what it pushed is undone and the error rethrown. */
export async function withUndo<T>(log: Logger, about: Record<string, unknown>, fn: (u: Undo) => Promise<T>): Promise<T> {
  const u = new Undo(log, about);
  try {
    return await fn(u);
  } catch (e) {
    await u.run();
    throw e;
  }
}
