import type { NatsConnection } from '@nats-io/nats-core';
import { Kvm, type KV, type KvOptions } from '@nats-io/kv';
import { BUCKETS } from '@forky/contract';

export interface Buckets {
  hosts: KV;
  locator: KV;
  requests: KV;
}

/**
 * Opens (creating if missing) the KV buckets the cluster keeps its state in. `replicas` is 3
 * where a 3-node JetStream cluster exists; finished requests are kept a day for idempotency.
 */
export async function openBuckets(nc: NatsConnection, opts: { replicas?: number } = {}): Promise<Buckets> {
  const kvm = new Kvm(nc);
  const replicas = opts.replicas ?? 1;
  const kv = (name: string, opts: Partial<KvOptions>): Promise<KV> =>
    createOrOpen(() => kvm.create(name, { history: 1, replicas, ...opts }), () => kvm.open(name), `KV bucket ${name}`);
  const [hosts, locator, requests] = await Promise.all([
    kv(BUCKETS.hosts, { description: 'forky: host heartbeats' }),
    kv(BUCKETS.locator, { description: 'forky: which host holds each VM and snapshot' }),
    kv(BUCKETS.requests, { ttl: 24 * 3600 * 1000, description: 'forky: idempotent requests and their replies' }),
  ]);
  return { hosts, locator, requests };
}

/**
 * Creates a bucket or binds the existing one. Several processes starting at once race to create
 * the same stream; the loser's create fails ("subjects overlap with an existing stream"), so it
 * binds what the winner made, a few times with a short pause while the stream settles.
 */
export async function createOrOpen<T>(create: () => Promise<T>, open: () => Promise<T>, what: string): Promise<T> {
  let last: unknown;
  for (let attempt = 0; attempt < 10; attempt++) {
    try {
      return attempt === 0 ? await create() : await open();
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
    }
  }
  throw new Error(`cannot create or open ${what}: ${(last as Error)?.message ?? last}`, { cause: last });
}
