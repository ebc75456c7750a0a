import type { Logger } from '@forky/base';

/** A process started for a snapshot and waiting for its state: a child minus the last steps. */
export interface WarmChild {
  id: string;
  mac: string;
  /** The child's own top layer, already made on the snapshot's layer. */
  top: string;
  handle: unknown;
}

export interface WarmPoolOptions {
  /** Processes kept waiting per hot snapshot; 0 turns the pool off. */
  size: number;
  /** Snapshots that keep a pool at once; the one forked least recently loses its pool first. */
  maxSnapshots: number;
}

/**
 * Per snapshot, a few QEMU processes already started, its RAM mapped, listening for its state:
 * a fork takes one and only loads the state (qemu-fork-facts.md: ~7 ms instead of a ~35 ms
 * process start). A snapshot becomes hot when it is forked; a take refills in the background.
 * The pool never outlives its snapshot: `drop` before the snapshot goes.
 */
export class WarmPool {
  readonly #ready = new Map<string, WarmChild[]>();
  /** Refills in flight, so a drop can wait for them. */
  readonly #filling = new Map<string, Promise<void>>();
  readonly #dropped = new Set<string>();

  constructor(
    private readonly opts: WarmPoolOptions,
    private readonly make: (snapshot: string) => Promise<WarmChild>,
    private readonly discard: (child: WarmChild) => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** A waiting process for `snapshot`, if one is ready. Marks the snapshot hot and refills. */
  take(snapshot: string): WarmChild | undefined {
    if (this.opts.size === 0) return undefined;
    const list = this.#ready.get(snapshot) ?? [];
    const child = list.shift();
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
      }
    })()
      .catch((err: unknown) => this.log.warn({ err, snapshot }, 'warm pool refill failed'))
      .finally(() => this.#filling.delete(snapshot));
    this.#filling.set(snapshot, run);
  }

  /** Stops and removes every waiting process of `snapshot`, including one being made. */
  async drop(snapshot: string): Promise<void> {
    this.#dropped.add(snapshot);
    const list = this.#ready.get(snapshot) ?? [];
    this.#ready.delete(snapshot);
    await Promise.all(list.map((c) => this.discard(c).catch((err: unknown) => this.log.warn({ err, vm: c.id }, 'warm process cleanup failed'))));
    await this.#filling.get(snapshot);
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
