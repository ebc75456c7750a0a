import type { Logger } from '@forky/base';
import type { IdleRule, VmState } from '@forky/contract';
import type { VmRecord } from './records.js';

/** What is due for a VM: its TTL passed, or its idle rule's time without activity did. */
export type Due = { what: 'expiry' } | { what: 'idle'; then: IdleRule['then'] };

/**
 * Carries out what is due (ops/lifecycle.ts). `announce()`, called once the VM is sure to go: true
 * when no `expired` event was said of it yet (a destroy that failed is tried again without a
 * second one). `later`: it could not be done now (the VM is mid-operation); tried again shortly.
 */
export type DueHandler = (rec: VmRecord, due: Due, announce: () => boolean) => Promise<'done' | 'later'>;

/** States an operation holds a VM in: what is due of it waits until the operation is over. */
export const MID_OPERATION: ReadonlySet<VmState> = new Set<VmState>(['booting', 'restoring', 'snapshotting', 'destroying']);
/** The first retry of a VM mid-operation, doubled per retry up to the most (a VM stuck so costs little). */
const RETRY_MS = 500;
const MAX_RETRY_MS = 5_000;
/** After a failed attempt (logged). */
const ERROR_RETRY_MS = 5_000;
/**
 * An attempt still under way this long is logged. It is not given up on: the VM stays busy until
 * it settles, so a hung destroy is never joined by a second one (nor a second `expired`).
 */
const ATTEMPT_MS = 2 * 60_000;
/** Activity is written to the VM's record at most this often (a restart may count idleness from a little earlier). */
export const ACTIVITY_PERSIST_MS = 10_000;
/** setTimeout's longest delay; a later deadline is reached by re-arming. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Sets a new VM's TTL (counted from now) and idle rule, if it has them. */
export function setLifetime(rec: VmRecord, o: { ttlMs?: number | undefined; idle?: IdleRule | undefined }, now = Date.now()): void {
  if (o.ttlMs !== undefined) extendLifetime(rec, o.ttlMs, now);
  if (o.idle) rec.idle = { ...o.idle };
}

/** `vm.extend`: the VM now expires `ttlMs` from now. */
export function extendLifetime(rec: VmRecord, ttlMs: number, now = Date.now()): void {
  rec.ttlMs = ttlMs;
  rec.expiresAt = now + ttlMs;
}

/**
 * Whether `rec`'s idle rule applies to it now: a running VM with no work under way (`working`:
 * execs, guest streams and calls). A paused one (by its rule or its user) is not checked again; a
 * failed one is, if its rule destroys (a destroy that failed is tried again).
 */
function idleApplies(rec: VmRecord, working: number): rec is VmRecord & { idle: IdleRule } {
  return !!rec.idle && working === 0 && (rec.state === 'running' || (rec.state === 'failed' && rec.idle.then === 'destroy'));
}

/** When something is next due for `rec`, and what (its expiry first when both are). */
export function dueOf(rec: VmRecord, working = 0): { at: number; due: Due } | undefined {
  if (rec.state === 'destroyed') return undefined;
  let next: { at: number; due: Due } | undefined = rec.expiresAt === undefined ? undefined : { at: rec.expiresAt, due: { what: 'expiry' } };
  if (idleApplies(rec, working)) {
    const at = rec.lastActivityAt + rec.idle.afterMs;
    if (!next || at < next.at) next = { at, due: { what: 'idle', then: rec.idle.then } };
  }
  return next;
}

export interface LifetimesTiming {
  now: () => number;
  /** When an attempt still under way is logged (ATTEMPT_MS). */
  attemptMs: number;
  /** When a failed attempt is tried again (ERROR_RETRY_MS). */
  errorRetryMs: number;
}

/**
 * Every VM's TTL and idle rule, enforced by one timer armed for the nearest deadline over all
 * VMs. Re-armed when a record is written (`arm`, coalesced), so a lifecycle change is seen at
 * once; a touch only moves a VM's activity in memory, so the timer may fire early and re-arm.
 * The timer never keeps the process alive, never throws, and never waits for what it starts.
 */
export class Lifetimes {
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #armQueued = false;
  #closed = false;
  /** VMs whose due work runs now: never started twice at once. */
  readonly #busy = new Set<VmRecord>();
  /** VMs tried again no sooner than `at` (mid-operation, or after a failure), and the delay that got them there. */
  readonly #later = new WeakMap<VmRecord, { at: number; delayMs: number }>();
  /** VMs an `expired` event was said of. */
  readonly #announced = new WeakSet<VmRecord>();
  readonly #activityWritten = new WeakMap<VmRecord, number>();
  /** Per VM, work under way (execs, guest streams and calls): its idle rule waits for it. */
  readonly #working = new WeakMap<VmRecord, number>();

  readonly #log: Logger;
  readonly #t: LifetimesTiming;

  constructor(
    /** The host's VMs. */
    private readonly vms: ReadonlyMap<string, VmRecord>,
    private readonly onDue: DueHandler,
    log: Logger,
    timing: Partial<LifetimesTiming> = {},
  ) {
    this.#log = log.child({ component: 'lifetimes' });
    this.#t = { now: Date.now, attemptMs: ATTEMPT_MS, errorRetryMs: ERROR_RETRY_MS, ...timing };
  }

  /** Closed with the engine: nothing more is started (lifecycle.ts checks it under the VM's lock). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Work on `rec` begins (ops/lifecycle.ts `work`): its idle rule is not due until every piece has ended. */
  begin(rec: VmRecord): void {
    this.#working.set(rec, this.working(rec) + 1);
  }

  /** A piece of work on `rec` ended; its idle time is counted again (the caller touches it). */
  end(rec: VmRecord): void {
    const left = this.working(rec) - 1;
    if (left > 0) this.#working.set(rec, left);
    else this.#working.delete(rec);
    this.arm();
  }

  working(rec: VmRecord): number {
    return this.#working.get(rec) ?? 0;
  }

  /**
   * Whether `due` still holds for `rec` now: re-checked under its lock before it is carried out
   * (an extend, a touch or new work that came first wins). Never once closed.
   */
  isDue(rec: VmRecord, due: Due): boolean {
    if (this.#closed || rec.state === 'destroyed') return false;
    const now = this.#t.now();
    if (due.what === 'expiry') return rec.expiresAt !== undefined && rec.expiresAt <= now;
    return idleApplies(rec, this.working(rec)) && rec.idle.then === due.then && rec.lastActivityAt + rec.idle.afterMs <= now;
  }

  /** A VM's lifecycle (or state) may have changed: the timer is set again, once per tick however many call. */
  arm(): void {
    if (this.#armQueued || this.#closed) return;
    this.#armQueued = true;
    queueMicrotask(() => {
      this.#armQueued = false;
      this.#arm();
    });
  }

  /**
   * Activity on `rec` now. True when its record should be written: at most every
   * ACTIVITY_PERSIST_MS, and only for a VM with an idle rule (no other reads it after a restart).
   */
  touch(rec: VmRecord): boolean {
    const now = this.#t.now();
    rec.lastActivityAt = now;
    if (!rec.idle || now - (this.#activityWritten.get(rec) ?? -Infinity) < ACTIVITY_PERSIST_MS) return false;
    this.#activityWritten.set(rec, now);
    return true;
  }

  /** No more timers (engine close); work under way finishes on its own. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** When `rec` is next to be looked at: its deadline, or its retry if later; never while busy. */
  #nextAt(rec: VmRecord): number {
    if (this.#busy.has(rec)) return Infinity;
    const d = dueOf(rec, this.working(rec));
    if (!d) return Infinity;
    return Math.max(d.at, this.#later.get(rec)?.at ?? -Infinity);
  }

  #arm(): void {
    if (this.#closed) return;
    let next = Infinity;
    for (const rec of this.vms.values()) next = Math.min(next, this.#nextAt(rec));
    if (this.#timer && next === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = next;
    if (next === Infinity) return;
    this.#timer = setTimeout(() => this.#fire(), Math.min(Math.max(0, next - this.#t.now()), MAX_TIMER_MS));
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    const now = this.#t.now();
    for (const rec of [...this.vms.values()]) {
      const d = dueOf(rec, this.working(rec));
      if (d && this.#nextAt(rec) <= now) void this.#run(rec, d.due);
    }
    this.#arm();
  }

  async #run(rec: VmRecord, due: Due): Promise<void> {
    if (MID_OPERATION.has(rec.state)) return this.#retry(rec, false);
    this.#busy.add(rec);
    const slow = setTimeout(
      () => this.#log.warn({ vm: rec.id, due, ms: this.#t.attemptMs }, 'VM lifetime action still under way; the VM waits for it'),
      this.#t.attemptMs,
    );
    slow.unref();
    // A destroy tried again after a failure says nothing again.
    const announce = (): boolean => !this.#announced.has(rec) && !!this.#announced.add(rec);
    try {
      const r = await this.onDue(rec, due, announce);
      if (r === 'later') this.#retry(rec, false);
      else this.#later.delete(rec);
    } catch (err) {
      this.#log.warn({ err, vm: rec.id, due }, 'VM lifetime action failed; trying again later');
      this.#retry(rec, true);
    } finally {
      clearTimeout(slow);
      this.#busy.delete(rec);
      this.arm();
    }
  }

  #retry(rec: VmRecord, failed: boolean): void {
    const prev = this.#later.get(rec)?.delayMs;
    const delayMs = failed ? this.#t.errorRetryMs : prev === undefined ? RETRY_MS : Math.min(prev * 2, MAX_RETRY_MS);
    this.#later.set(rec, { at: this.#t.now() + delayMs, delayMs });
    this.arm();
  }
}
