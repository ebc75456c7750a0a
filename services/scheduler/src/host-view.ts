import type { KV } from '@nats-io/kv';
import type { QueuedIterator } from '@nats-io/nats-core';
import type { Logger } from '@forky/base';

/**
 * The hosts' last heartbeats, kept current by a watch on the KV bucket: a placement reads memory,
 * not one KV get per host (with 100 hosts that was 100 round trips per request), and each beat
 * is parsed and checked once when it arrives, not at every placement. It is a cache of
 * JetStream, rebuilt from it at start, never a source of truth: the scheduler stays stateless.
 * Entries carry their KV revision, so the initial read and the watch can race safely.
 */
export class HostView<T> {
  readonly #beats = new Map<string, { revision: number; value: T | undefined }>();
  #watch?: QueuedIterator<{ key: string; revision: number; operation: string; string(): string }>;

  constructor(
    private readonly kv: KV,
    /** Checks a beat's JSON text; undefined for one that is not valid. */
    private readonly parse: (body: string) => T | undefined,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    this.#watch = await this.kv.watch();
    void (async () => {
      for await (const e of this.#watch as AsyncIterable<{ key: string; revision: number; operation: string; string(): string }>) {
        this.#apply(e.key, e.revision, e.operation === 'PUT' ? e.string() : undefined);
      }
    })().catch((err: unknown) => this.log.warn({ err }, 'heartbeat watch ended'));
    for await (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (e) this.#apply(key, e.revision, e.operation === 'PUT' ? e.string() : undefined);
    }
  }

  /** The last valid heartbeat of every host that has one. */
  values(): T[] {
    return [...this.#beats.values()].flatMap((b) => (b.value === undefined ? [] : [b.value]));
  }

  /** One host's last valid heartbeat. */
  get(key: string): T | undefined {
    return this.#beats.get(key)?.value;
  }

  stop(): void {
    this.#watch?.stop();
  }

  #apply(key: string, revision: number, body: string | undefined): void {
    const have = this.#beats.get(key);
    if (have && have.revision >= revision) return;
    this.#beats.set(key, { revision, value: body === undefined ? undefined : this.parse(body) });
  }
}
