import type { KV } from '@nats-io/kv';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { withDeadline, type Logger } from '@forky/base';
import { isReadableKey, logBadEntry } from '@forky/bus';

/**
 * The hosts' last heartbeats, kept current from the heartbeat subjects: a placement reads memory,
 * not one KV get per host, and each beat is parsed and checked once when it arrives. It starts
 * from the hosts bucket (what every host last reported) and is never a source of truth: the
 * scheduler stays stateless.
 *
 * The live feed is a core subscription, not a KV watch: the client re-subscribes on its own when
 * it moves to another node, while a watch (an ordered consumer) can stall for tens of seconds
 * when the node leading the bucket dies (measured: test/faults/nats-cluster.test.ts). A beat
 * counts only on its own host's subject, and a newer or equal `ts` wins, so the two sources can race.
 */
export class HostView<T extends { id: string; ts: number; instance?: string | undefined; after?: (prev: T) => T }> {
  readonly #beats = new Map<string, T>();
  /** The same beats in host id order, kept as they arrive: a placement reads it as is. */
  readonly #sorted: T[] = [];
  #sub?: Subscription;

  constructor(
    private readonly nc: NatsConnection,
    private readonly kv: KV,
    /** The wildcard subject of every host's heartbeat, and how to get the host id from one. */
    private readonly feed: { subject: string; hostOf: (subject: string) => string | undefined },
    /** Checks a beat's JSON text; undefined for one that is not valid. */
    private readonly parse: (body: string) => T | undefined,
    private readonly log: Logger,
  ) {}

  async start(seedTimeoutMs = 5_000): Promise<void> {
    this.#sub = this.nc.subscribe(this.feed.subject, {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err }, 'heartbeat subscription failed');
        this.#apply(this.feed.hostOf(msg.subject), msg.string(), `heartbeat ${msg.subject}`);
      },
    });
    await this.#seed(seedTimeoutMs);
  }

  /**
   * The bucket only seeds the view: beats arrive every period anyway. So a listing that does not
   * finish in time (an ordered consumer that never delivers, as once seen right after a
   * scheduler was killed mid-job) is given up, not waited on: start-up must not hang on it.
   */
  async #seed(timeoutMs: number): Promise<void> {
    const keys = await withDeadline(this.kv.keys(), timeoutMs, 'listing the hosts bucket');
    const read = (async () => {
      for await (const key of keys) {
        // A key the client would throw on (stored by a raw publish) is skipped, not the rest.
        if (!isReadableKey(key)) continue;
        const e = await this.kv.get(key);
        if (e?.operation === 'PUT') this.#apply(key, e.string(), `${e.bucket}/${key}`);
      }
    })();
    await withDeadline(read, timeoutMs, 'reading the hosts bucket').catch((err: unknown) => {
      keys.stop();
      this.log.warn({ err, hosts: this.#beats.size }, 'the hosts bucket was not read in time; heartbeats will fill the view');
    });
  }

  /** The last valid heartbeat of every host that has one, in host id order (not to be changed by the caller). */
  values(): readonly T[] {
    return this.#sorted;
  }

  /** One host's last valid heartbeat. */
  get(host: string): T | undefined {
    return this.#beats.get(host);
  }

  stop(): void {
    this.#sub?.unsubscribe();
  }

  /** A beat that is not valid, or not its sender's own, is logged (throttled, one line) and dropped. */
  #apply(host: string | undefined, body: string, where: string): void {
    const beat = this.parse(body);
    if (!host || !beat || beat.id !== host) {
      logBadEntry(this.log, where, beat ? `a beat of ${beat.id} sent for ${host ?? 'no host'}` : 'not a valid heartbeat', body);
      return;
    }
    const have = this.#beats.get(host);
    let next: T;
    // Equal times are not older: a change's beat and the period's can share a millisecond, and
    // one host's beats arrive in the order it sent them (the period's list must not be dropped).
    if (have && have.ts > beat.ts) {
      // An older beat is dropped, but for its list when the newer one has none (the bucket's full
      // beat read after a change's beat came on the feed): the same process's list is the best known.
      if (!have.after || beat.after || have.instance !== beat.instance) return;
      next = have.after(beat);
    } else {
      // A beat with only what a change moved takes the rest (its VM list) from the one it follows.
      next = have && beat.after ? beat.after(have) : beat;
    }
    this.#beats.set(host, next);
    // Hosts are never dropped, so a new one is rare: only then is the order worked out again.
    if (have) this.#sorted[this.#sorted.indexOf(have)] = next;
    else {
      this.#sorted.push(next);
      this.#sorted.sort((a, b) => a.id.localeCompare(b.id));
    }
  }
}
