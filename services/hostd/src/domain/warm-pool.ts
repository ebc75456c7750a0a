import { withDeadline, type Logger } from '@forky/base';
import type { VmHandle, VmRuntime, VmSpec } from './ports.js';

/** A process started for a snapshot and waiting for its state: a child minus the last steps. */
/** `H`: the runtime's handle (opaque to the pool). */
export interface WarmChild<H = unknown> {
  id: string;
  mac: string;
  /** The child's own top layer, already made on the snapshot's layer. */
  top: string;
  handle: H;
  /** Resolves when its process exits: a waiting process that dies leaves the pool then. */
  exited: Promise<void>;
}

/** Deaths in a row (no fork between) after which a snapshot's pool is not topped up until its next fork. */
const MAX_DEATHS = 3;

export interface WarmPoolOptions {
  /** Processes kept waiting per hot snapshot; 0 turns the pool off. */
  size: number;
  /** Snapshots that keep a pool at once; the one forked least recently loses its pool first. */
  maxSnapshots: number;
}

/**
 * Per snapshot, a few QEMU processes already started, its RAM mapped, listening for its state:
 * a fork takes one and only loads the state (~7 ms instead of a ~35 ms
 * process start). A snapshot becomes hot when it is forked; a take refills in the background.
 * The pool never outlives its snapshot: `drop` before the snapshot goes. A waiting process that
 * exits is taken out (and its files discarded) when it exits, never handed to a fork, and replaced
 * (unless a snapshot's processes keep dying: then only its next fork tops it up again).
 */
export class WarmPool<H = unknown> {
  readonly #ready = new Map<string, Array<WarmChild<H>>>();
  /** Refills in flight, so a drop can wait for them. */
  readonly #filling = new Map<string, Promise<void>>();
  readonly #dropped = new Set<string>();
  /** Per snapshot, waiting processes that died since its last fork. */
  readonly #deaths = new Map<string, number>();

  constructor(
    private readonly opts: WarmPoolOptions,
    private readonly make: (snapshot: string) => Promise<WarmChild<H>>,
    private readonly discard: (child: WarmChild<H>) => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** A waiting process for `snapshot`, if one is ready. Marks the snapshot hot and refills. */
  take(snapshot: string): WarmChild<H> | undefined {
    if (this.opts.size === 0) return undefined;
    const list = this.#ready.get(snapshot) ?? [];
    const child = list.shift();
    this.#deaths.delete(snapshot);
    // Most recently used last: Map keeps insertion order.
    this.#ready.delete(snapshot);
    this.#ready.set(snapshot, list);
    return child;
  }

  /** Tops the pool of `snapshot` up, in the background; evicts the coldest pool past the limit. */
  refill(snapshot: string): void {
    if (this.opts.size === 0 || this.#filling.has(snapshot)) return;
    this.#dropped.delete(snapshot);
    if (!this.#ready.has(snapshot)) this.#ready.set(snapshot, []);
    while (this.#ready.size > this.opts.maxSnapshots) {
      const coldest = this.#ready.keys().next().value as string;
      void this.drop(coldest);
    }
    const run = (async () => {
      while (!this.#dropped.has(snapshot) && (this.#ready.get(snapshot)?.length ?? this.opts.size) < this.opts.size) {
        const child = await this.make(snapshot);
        if (this.#dropped.has(snapshot)) {
          await this.discard(child);
          break;
        }
        this.#ready.get(snapshot)?.push(child);
        void child.exited.then(() => this.#died(snapshot, child));
      }
    })()
      .catch((err: unknown) => this.log.warn({ err, snapshot }, 'warm pool refill failed'))
      .finally(() => this.#filling.delete(snapshot));
    this.#filling.set(snapshot, run);
  }

  /** Stops and removes every waiting process of `snapshot`, including one being made. */
  async drop(snapshot: string): Promise<void> {
    this.#dropped.add(snapshot);
    this.#deaths.delete(snapshot);
    const list = this.#ready.get(snapshot) ?? [];
    this.#ready.delete(snapshot);
    await Promise.all(
      list.map((c) => this.discard(c).catch((err: unknown) => this.log.warn({ err, vm: c.id }, 'warm process cleanup failed'))),
    );
    await this.#filling.get(snapshot);
  }

  /** A waiting process exited: out of the pool, its files gone, and a new one in its place. */
  #died(snapshot: string, child: WarmChild<H>): void {
    const list = this.#ready.get(snapshot);
    const at = list?.indexOf(child) ?? -1;
    if (!list || at === -1) return; // taken by a fork, or dropped: no longer the pool's
    list.splice(at, 1);
    const deaths = (this.#deaths.get(snapshot) ?? 0) + 1;
    this.#deaths.set(snapshot, deaths);
    this.log.warn({ snapshot, vm: child.id, deaths }, 'warm process exited; replacing it');
    void this.discard(child).catch((err: unknown) => this.log.warn({ err, vm: child.id }, 'warm process cleanup failed'));
    if (deaths >= MAX_DEATHS) return;
    // A refill in flight may be past its last check: top up again once it is done.
    void (this.#filling.get(snapshot) ?? Promise.resolve()).then(() => {
      if (this.#ready.has(snapshot) && !this.#dropped.has(snapshot)) this.refill(snapshot);
    });
  }

  async dropAll(): Promise<void> {
    await Promise.all([...new Set([...this.#ready.keys(), ...this.#filling.keys()])].map((s) => this.drop(s)));
  }

  /** Layers held by waiting processes: garbage collection must keep them. */
  layers(): string[] {
    return [...this.#ready.values()].flatMap((l) => l.map((c) => c.top));
  }

  /** Processes waiting, for one snapshot or all. */
  size(snapshot?: string): number {
    if (snapshot !== undefined) return this.#ready.get(snapshot)?.length ?? 0;
    return [...this.#ready.values()].reduce((a, l) => a + l.length, 0);
  }
}

/** How long a failed load waits to see whether the warm process died (its exit is seen in ms). */
const DEATH_SEEN_MS = 2000;

/**
 * Loads a fork's state into a process taken from the pool. A process that died just before
 * (its exit not yet seen when it was taken) fails the load; then a fresh process is started for
 * the same child and loaded instead, so the fork still succeeds at its first try.
 */
export async function loadWarm(
  runtime: VmRuntime,
  h: VmHandle,
  spec: VmSpec,
  stateFile: string,
  timeoutMs: number,
  log: Logger,
): Promise<{ handle: VmHandle; replaced: boolean }> {
  try {
    await runtime.load(h, stateFile, timeoutMs);
    return { handle: h, replaced: false };
  } catch (e) {
    const died = await withDeadline(h.exited, DEATH_SEEN_MS, 'warm process exit').then(
      () => true,
      () => false,
    );
    if (!died) throw e;
    log.warn({ vm: spec.id, pid: h.pid }, 'warm process died as it was taken; starting a fresh one');
    await runtime.destroy(h);
    const fresh = await runtime.prepare(spec, { autostart: true, timeoutMs });
    try {
      await runtime.load(fresh, stateFile, timeoutMs);
    } catch (err) {
      await runtime.destroy(fresh);
      throw err;
    }
    return { handle: fresh, replaced: true };
  }
}
