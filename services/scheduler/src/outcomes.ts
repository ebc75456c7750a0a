import { KvWatchInclude, type KV, type KvEntry } from '@nats-io/kv';
import { DeadlineError, type Logger } from '@forky/base';
import { entryValue } from '@forky/bus';
import { fromWireError } from '@forky/contract';
import { Entry, keyReused } from './records.js';

interface Waiter {
  since: number;
  addedAt: number;
  /** Takes a record written after `since`; settles the wait if the record ends the request. */
  see(revision: number, entry: Entry): void;
}

/** One wait for a key's outcome; `cancel` ends it without a word (nobody awaits `done` then). */
export interface Waiting<T> {
  done: Promise<T>;
  cancel(): void;
}

/**
 * The callers waiting for their requests' outcomes in the requests bucket, whichever scheduler
 * writes them. A record this process writes is told at once (`seen`); one written elsewhere
 * arrives through one watch of the whole bucket (when `watch`), not one consumer per request;
 * a read of every key waited on for longer than `pollMs` is the safety net, since a watch can
 * stall for tens of seconds while the cluster replaces a dead node.
 */
export class Outcomes {
  readonly #waiting = new Map<string, Set<Waiter>>();
  #poll: NodeJS.Timeout | undefined;
  #watch: { stop(): void } | undefined;
  #stopped = false;

  constructor(
    private readonly kv: KV,
    private readonly log: Logger,
    /** `closed`: the connection is gone for good, so the watch is not started again. */
    private readonly opts: { watch: boolean; pollMs?: number; closed?: () => boolean },
  ) {
    if (opts.watch) void this.#follow();
  }

  /** Waits for the request under `key` to end in a record written after revision `since`. */
  wait<T>(key: string, hash: string, since: number, timeoutMs: number): Waiting<T> {
    let cancel!: () => void;
    const done = new Promise<T>((resolve, reject) => {
      const set = this.#waiting.get(key) ?? new Set<Waiter>();
      this.#waiting.set(key, set);
      const end = (f: () => void): void => {
        clearTimeout(timer);
        set.delete(w);
        if (set.size === 0 && this.#waiting.get(key) === set) this.#waiting.delete(key);
        if (this.#waiting.size === 0) this.#quiet();
        f();
      };
      const w: Waiter = {
        since,
        addedAt: Date.now(),
        see: (revision, entry) => {
          if (revision <= since || !set.has(w)) return;
          if (entry.hash !== hash) end(() => reject(keyReused(key)));
          else if (entry.state === 'done') end(() => resolve(entry.reply as T));
          else if (entry.state === 'failed' && !entry.retry)
            end(() => reject(fromWireError({ error: entry.error ?? { code: 'INTERNAL', message: 'failed' } }, key)));
        },
      };
      const timer = setTimeout(
        () =>
          end(() =>
            reject(
              new DeadlineError(
                `request ${key} (one not started by its deadline is failed, not run; one under way finishes: ask again with the same key for its outcome)`,
                timeoutMs,
              ),
            ),
          ),
        timeoutMs,
      );
      cancel = () => end(() => resolve(undefined as T));
      set.add(w);
      this.#poll ??= setInterval(() => this.#pollOnce(), this.opts.pollMs ?? 2_000);
    });
    return { done, cancel };
  }

  /** A record this process wrote (or read), for its waiters here. */
  seen(key: string, revision: number, entry: Entry): void {
    for (const w of this.#waiting.get(key) ?? []) w.see(revision, entry);
  }

  stop(): void {
    this.#stopped = true;
    this.#watch?.stop();
    this.#quiet();
  }

  #quiet(): void {
    clearInterval(this.#poll);
    this.#poll = undefined;
  }

  #deliver(e: KvEntry | null): void {
    if (!e || !this.#waiting.has(e.key)) return;
    const entry = entryValue(Entry, e, this.log);
    if (entry) this.seen(e.key, e.revision, entry);
  }

  #pollOnce(): void {
    const due = Date.now() - (this.opts.pollMs ?? 2_000);
    for (const [key, set] of this.#waiting)
      if ([...set].some((w) => w.addedAt <= due))
        void this.kv.get(key).then(
          (e) => this.#deliver(e),
          () => undefined,
        );
  }

  /** Follows every write to the bucket from now on; a watch that ends or fails is started again (the poll covers the gap). */
  async #follow(): Promise<void> {
    while (!this.#stopped && !this.opts.closed?.()) {
      try {
        const w = await this.kv.watch({ include: KvWatchInclude.UpdatesOnly });
        this.#watch = w;
        if (this.#stopped) w.stop();
        for await (const e of w) this.#deliver(e);
      } catch (err) {
        if (!this.#stopped && !this.opts.closed?.())
          this.log.warn({ err }, 'watching the requests bucket failed; reading waited-on keys every 2 s meanwhile');
      }
      this.#watch = undefined;
      if (!this.#stopped && !this.opts.closed?.()) await new Promise((r) => setTimeout(r, 1_000).unref());
    }
  }
}
