import { ConflictError, type Logger } from '@forky/base';
import type { ExecResult } from '@forky/contract';
import type { RecordStore } from './ports.js';

/** Idempotency keys remembered; the oldest are forgotten past this (the scheduler keeps them a day). */
const MAX_KEYS = 10_000;

/**
 * Exec outcomes are kept in memory only, bounded by size and age. An exec's reply may be ~1 MiB
 * (its output), so writing each to disk would cost every exec a large write, and a retry after a
 * lost reply comes within the client's retry window (seconds), not after a restart. The bounds:
 */
export const EXEC_MEMORY = {
  /** Output kept across all remembered execs; the oldest go first past this. */
  maxBytes: 64 << 20,
  /** An outcome older than this is forgotten (a repeat then runs the command again). */
  maxAgeMs: 15 * 60_000,
};

interface Entry {
  op: string;
  /** What the request made (before its outcome is saved: an abandon undoes it even if the save fails). */
  made: Promise<unknown>;
  result: Promise<unknown>;
  /** Set once `result` is fulfilled (a failed one is forgotten). */
  done: boolean;
  /** Its caller gave it up for good (abandon): its outcome is not saved, and is undone. */
  abandoned: boolean;
}

interface ExecEntry {
  /** The request it answers: the same key with another command is refused. */
  fingerprint: string;
  outcome: Promise<ExecResult>;
  at: number;
  bytes: number;
}

/**
 * Requests by idempotency key: the same key gets the same outcome, run once. Keyed requests that
 * make things (boot, fork, snapshot, apps) are remembered on disk once they succeed, so a retry
 * after a restart gets the first reply; a failed one may be retried under its key. Keyed execs are
 * remembered in memory (see EXEC_MEMORY), failures included once the command reached the guest:
 * a command that timed out may have run. A request without a key is never deduped.
 */
export class Requests {
  readonly #byKey = new Map<string, Entry>();
  readonly #execs = new Map<string, ExecEntry>();
  #execBytes = 0;

  constructor(
    private readonly records: RecordStore,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Runs `fn` once per key; a repeat waits for and returns the first run's outcome. */
  once<T>(key: string | undefined, op: string, fn: () => Promise<T>): Promise<T> {
    if (!key) return fn();
    const conflict = this.#otherOp(key, op);
    if (conflict) return Promise.reject(conflict);
    const seen = this.#byKey.get(key);
    if (seen) return seen.result as Promise<T>;
    const made = fn();
    const entry: Entry = { op, made, result: made, done: false, abandoned: false };
    entry.result = made.then(async (value) => {
      // On disk too: after a restart, a retry gets this reply instead of a second set of VMs.
      if (!entry.abandoned) {
        await this.records.saveRequest(key, op, value);
        // Abandoned while it was being saved: what was written goes too.
        if (entry.abandoned) await this.records.forgetRequest(key);
      }
      entry.done = true;
      return value;
    });
    // A failed request may be retried under the same key.
    entry.result.catch(() => this.#byKey.get(key) === entry && this.#byKey.delete(key));
    this.#remember(key, entry);
    return entry.result as Promise<T>;
  }

  /**
   * The caller of the keyed `op` under `key` gave it up for good: `undo` gets its outcome, now if
   * it is done, or once it ends (not awaited: a fork may take minutes), and the key is forgotten
   * at once, on disk too, so that a request under it later runs anew instead of being handed
   * what was undone. Nothing under the key: `none`, and nothing is kept of the call.
   */
  async abandon(key: string, op: string, undo: (outcome: unknown) => Promise<void>): Promise<'running' | 'done' | 'none'> {
    const conflict = this.#otherOp(key, op);
    if (conflict) throw conflict;
    const entry = this.#byKey.get(key);
    if (!entry) return 'none';
    entry.abandoned = true;
    this.#byKey.delete(key);
    const undone = entry.made.then(undo, () => undefined);
    if (!entry.done) {
      // Not saved once abandoned: nothing on disk to forget (a new request under the key may own it by then).
      void undone.catch((err: unknown) => this.log.warn({ err, key }, 'undoing an abandoned request failed'));
      return 'running';
    }
    // Saved before it was abandoned (or restored from disk): forgotten there too.
    await Promise.all([this.records.forgetRequest(key), undone]);
    return 'done';
  }

  /** Finished requests found on disk by a restarted hostd. */
  restore(requests: Iterable<{ key: string; op: string; result: unknown }>): void {
    for (const q of requests) {
      const result = Promise.resolve(q.result);
      this.#remember(q.key, { op: q.op, made: result, result, done: true, abandoned: false });
    }
  }

  /**
   * Runs an exec once per key. `fn` calls `sent` as the command goes to the guest: a failure
   * before that (no such VM, not running) is not remembered, one after it is.
   */
  exec(key: string | undefined, fingerprint: string, fn: (sent: () => void) => Promise<ExecResult>): Promise<ExecResult> {
    if (!key) return fn(() => undefined);
    const conflict = this.#otherOp(key, 'exec');
    if (conflict) return Promise.reject(conflict);
    this.#expire();
    const seen = this.#execs.get(key);
    if (seen) {
      if (seen.fingerprint !== fingerprint)
        return Promise.reject(new ConflictError(`idempotency key ${key} was used for another exec`, { field: 'key' }));
      return seen.outcome;
    }
    let sent = false;
    const entry: ExecEntry = { fingerprint, outcome: fn(() => (sent = true)), at: this.now(), bytes: 0 };
    this.#execs.set(key, entry);
    entry.outcome.then(
      (r) => this.#settled(key, entry, Buffer.byteLength(r.stdout) + Buffer.byteLength(r.stderr)),
      () => (sent ? this.#settled(key, entry, 0) : this.#execs.delete(key)),
    );
    return entry.outcome;
  }

  #settled(key: string, entry: ExecEntry, bytes: number): void {
    if (this.#execs.get(key) !== entry) return;
    entry.at = this.now();
    entry.bytes = bytes + 256;
    this.#execBytes += entry.bytes;
    this.#expire();
  }

  /** Forgets execs past their age, then the oldest while over the size bound (never one still running). */
  #expire(): void {
    const now = this.now();
    for (const [key, e] of this.#execs) {
      if (e.bytes === 0) continue;
      if (now - e.at <= EXEC_MEMORY.maxAgeMs && this.#execBytes <= EXEC_MEMORY.maxBytes) continue;
      this.#execs.delete(key);
      this.#execBytes -= e.bytes;
    }
  }

  #otherOp(key: string, op: string): ConflictError | undefined {
    const other = this.#byKey.get(key)?.op ?? (this.#execs.has(key) ? 'exec' : undefined);
    return other !== undefined && other !== op
      ? new ConflictError(`idempotency key ${key} was used for a ${other} request`, { field: 'key' })
      : undefined;
  }

  #remember(key: string, entry: Entry): void {
    this.#byKey.set(key, entry);
    if (this.#byKey.size <= MAX_KEYS) return;
    const oldest = this.#byKey.keys().next().value as string;
    this.#byKey.delete(oldest);
    void this.records.forgetRequest(oldest).catch((err: unknown) => this.log.warn({ err, key: oldest }, 'request record delete failed'));
  }
}
