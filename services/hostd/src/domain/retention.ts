import { asForkyError } from '@forky/base';
import type { Host } from './host.js';
import type { SnapshotRecord } from './records.js';
import { dependents } from './ops/delete-snapshot.js';

/** The longest a sweep waits: a snapshot's expiry is noticed within this of its time. */
const SWEEP_MS = 30_000;
/** After a deletion that failed for another reason than a refusal: tried again this much later. */
const RETRY_MS = SWEEP_MS;

/**
 * A snapshot in use: a VM here was forked from it or last snapshotted into it, a VM or snapshot
 * runs on its memory or frozen layer (what `snapshot rm` refuses on), a fork is using it, the warm
 * pool holds processes for it, or another snapshot here descends from it in the lineage.
 */
export function snapshotInUse(host: Host, s: SnapshotRecord): boolean {
  const id = s.info.id;
  if ((host.snapUsers.get(id) ?? 0) > 0 || host.pool.size(id) > 0) return true;
  for (const v of host.vms.values()) if (v.parentSnapshot === id || v.lineage === id) return true;
  const { vms, snapshots } = dependents(host, s);
  if (vms.length + snapshots.length > 0) return true;
  for (const o of host.snaps.values()) if (o.info.parentSnapshot === id) return true;
  return false;
}

/**
 * Snapshot retention: a snapshot of this host that nothing uses (above) and that is not `keep`
 * expires `retentionMs` after it was last seen in use, and is then deleted the way `snapshot rm`
 * deletes it (no cascade), said by an `expired` event. A fetched copy expires whatever its origin
 * said (it can be fetched again). Expiry times live in memory only: a restarted hostd counts
 * them again from its recovery, which only ever keeps a snapshot longer. `retentionMs` 0: never.
 */
export class Retention {
  /** Per snapshot not in use: when it expires (ms since the epoch). */
  readonly #due = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #held = 0;
  #closed = false;

  constructor(
    private readonly host: Host,
    private readonly retentionMs: number,
    /** The engine's own delete (not cascade), so the snapshot goes as on `snapshot rm`. */
    private readonly remove: (id: string) => Promise<unknown>,
    private readonly now: () => number = Date.now,
  ) {
    if (retentionMs > 0) this.#arm(SWEEP_MS);
  }

  /** Something changed: sweep soon (a sweep already running goes over it again once done). */
  poke(): void {
    if (this.retentionMs <= 0 || this.#closed || this.#held > 0) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.#loop().finally(() => (this.#running = undefined));
  }

  /** No sweep while `op` runs (recovery: snapshots are taken back before the VMs that use them). */
  async hold<T>(op: () => Promise<T>): Promise<T> {
    this.#held++;
    try {
      return await op();
    } finally {
      this.#held--;
      this.poke();
    }
  }

  /** Stops the timer and waits for a sweep in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  async #loop(): Promise<void> {
    do {
      this.#again = false;
      await this.#sweep().catch((err: unknown) => this.host.log.warn({ err }, 'snapshot retention sweep failed'));
    } while (this.#again && !this.#closed);
    if (!this.#closed) this.#arm(this.#nextIn());
  }

  async #sweep(): Promise<void> {
    const now = this.now();
    for (const id of this.#due.keys()) if (!this.host.snaps.has(id)) this.#due.delete(id);
    for (const s of [...this.host.snaps.values()]) {
      const { info } = s;
      // Deleted while an earlier one was being expired.
      if (this.host.snaps.get(info.id) !== s) continue;
      // A copy's `keep` is its origin's: here it is a cache.
      if (s.origin) delete info.keep;
      if (info.keep || snapshotInUse(this.host, s)) {
        this.#forget(s);
        continue;
      }
      const due = this.#due.get(info.id) ?? now + this.retentionMs;
      this.#due.set(info.id, due);
      info.expiresAt = new Date(due).toISOString();
      if (due <= now && !this.#closed) await this.#expire(s);
    }
  }

  async #expire(s: SnapshotRecord): Promise<void> {
    const id = s.info.id;
    try {
      await this.remove(id);
    } catch (e) {
      const code = asForkyError(e).code;
      // Someone started using it since the check: in use again, not a failure; gone already: done.
      if (code === 'CONFLICT' || code === 'NOT_FOUND') return this.#forget(s);
      this.host.log.warn({ err: e, snapshot: id }, 'expired snapshot not deleted; trying again later');
      this.#due.set(id, this.now() + RETRY_MS);
      s.info.expiresAt = new Date(this.now() + RETRY_MS).toISOString();
      return;
    }
    this.#due.delete(id);
    // Said once it is gone: a refused deletion is no expiry.
    this.host.events.snapshotExpired(s.info);
    this.host.log.info({ snapshot: id, retentionMs: this.retentionMs }, 'unused snapshot expired and deleted');
  }

  #forget(s: SnapshotRecord): void {
    this.#due.delete(s.info.id);
    delete s.info.expiresAt;
  }

  #nextIn(): number {
    let next = SWEEP_MS;
    for (const due of this.#due.values()) next = Math.min(next, due - this.now());
    return Math.max(next, 10);
  }

  #arm(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.poke(), ms);
    this.#timer.unref();
  }
}
