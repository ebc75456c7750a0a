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
 * runs on its memory or frozen layer (what `snapshot rm` refuses on), a fork or a transfer is
 * using it, or another snapshot here descends from it in the lineage. The warm pool's processes
 * are not use (its deletion drops them): they would keep a snapshot nobody forks for ever.
 */
export function snapshotInUse(host: Host, s: SnapshotRecord): boolean {
  const id = s.info.id;
  if ((host.snapUsers.get(id) ?? 0) > 0) return true;
  for (const v of host.vms.values()) if (v.parentSnapshot === id || v.lineage === id) return true;
  const { vms, snapshots } = dependents(host, s);
  if (vms.length + snapshots.length > 0) return true;
  for (const o of host.snaps.values()) if (o.info.parentSnapshot === id) return true;
  return false;
}

/**
 * Never expired here: `keep`, or published by this host. Other hosts fork a published one from
 * the object store (its users are not seen here), so only its own deletion retires it. A fetched
 * copy is a cache: it expires whatever its origin said (it can be fetched again).
 */
function kept(s: SnapshotRecord): boolean {
  return !s.origin && (!!s.info.keep || !!s.published);
}

/**
 * Snapshot retention: a snapshot of this host that nothing uses (above) and that is not kept
 * (above) expires `retentionMs` after it was last seen in use (or fetched), and is then deleted
 * the way `snapshot rm` deletes it (no cascade), said by an `expired` event; the deletion checks
 * again under the snapshot's lock. Expiry times live in memory only: a restarted hostd counts
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
    /** The engine's own delete (not cascade), so the snapshot goes as on `snapshot rm`, if `due` still holds under its lock. */
    private readonly remove: (id: string, due: (s: SnapshotRecord) => boolean) => Promise<unknown>,
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

  /** The snapshot was fetched (a fork is to follow): its time starts over. */
  used(id: string): void {
    this.#due.delete(id);
    const s = this.host.snaps.get(id);
    if (s) delete s.info.expiresAt;
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
      if (kept(s) || snapshotInUse(this.host, s)) {
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
      if (await this.#publishedBefore(s)) return this.#forget(s);
      await this.remove(id, (r) => r === s && this.#stillDue(s));
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

  /** Due now, as the sweep saw it, and still neither kept nor in use (checked again under the snapshot's lock). */
  #stillDue(s: SnapshotRecord): boolean {
    const due = this.#due.get(s.info.id);
    const inTable = this.host.snaps.get(s.info.id) === s;
    return !this.#closed && inTable && due !== undefined && due <= this.now() && !kept(s) && !snapshotInUse(this.host, s);
  }

  /**
   * A snapshot of this host whose manifest is in the object store though its record does not say
   * so (published by a hostd before records said it, as a template's always is): recorded as
   * published now, and kept. The store not answering is a failure: tried again later.
   */
  async #publishedBefore(s: SnapshotRecord): Promise<boolean> {
    const parts = this.host.d.parts;
    if (s.origin || s.published || !parts) return false;
    try {
      await parts.getManifest(s.info.id);
    } catch (e) {
      if (e instanceof SyntaxError || asForkyError(e).code === 'NOT_FOUND') return false;
      throw e;
    }
    // Under its lock, and only while it is still here: a record written after its deletion would come back on a restart.
    await this.host.lock.run(s.info.id, async () => {
      if (this.host.snaps.get(s.info.id) !== s || s.published) return;
      s.published = true;
      await this.host.d.records.saveSnapshot(s);
    });
    this.host.log.info({ snapshot: s.info.id }, 'snapshot found published: kept by retention');
    return true;
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
