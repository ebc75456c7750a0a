import type { Logger } from '@forky/base';

interface Step {
  what: string;
  undo: () => unknown;
}

/**
 * The one way an operation takes back what it did when a later step fails: each step, once done
 * (or just before, if its undo is harmless when the step never happened), pushes its undo; a
 * failure runs them newest first. `commit` marks the point of no return: what was done stays.
 */
export class Rollback {
  readonly #steps: Step[] = [];

  constructor(
    private readonly log: Logger,
    private readonly about: Record<string, unknown>,
  ) {}

  push(what: string, undo: () => unknown): void {
    this.#steps.push({ what, undo });
  }

  /** Past the point of no return: nothing done so far is undone any more. */
  commit(): void {
    this.#steps.length = 0;
  }

  /** Undoes every step, newest first; a step that fails is logged and the next still runs. */
  async undo(): Promise<void> {
    for (let s = this.#steps.pop(); s; s = this.#steps.pop()) {
      try {
        await s.undo();
      } catch (err) {
        this.log.warn({ ...this.about, err, step: s.what }, 'rollback step failed');
      }
    }
  }

  /**
   * A step past the point of no return: tried twice, then logged. The operation stands either way,
   * so its failure is not the caller's (a retry would make a second one).
   */
  async forward(what: string, step: () => Promise<unknown>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await step();
        return;
      } catch (err) {
        if (attempt >= 2) {
          this.log.warn({ ...this.about, err, step: what }, 'step past the point of no return failed; carrying on');
          return;
        }
      }
    }
  }
}

/** Runs `fn` with an undo stack of its own: if it throws, what it pushed is undone and the error rethrown. */
export async function withRollback<T>(log: Logger, about: Record<string, unknown>, fn: (rb: Rollback) => Promise<T>): Promise<T> {
  const rb = new Rollback(log, about);
  try {
    return await fn(rb);
  } catch (e) {
    await rb.undo();
    throw e;
  }
}
