import type { NatsConnection } from '@nats-io/nats-core';
import { Kvm, type KV } from '@nats-io/kv';
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
  const [hosts, locator, requests] = await Promise.all([
    kvm.create(BUCKETS.hosts, { history: 1, replicas, description: 'forky: host heartbeats' }),
    kvm.create(BUCKETS.locator, { history: 1, replicas, description: 'forky: which host holds each VM and snapshot' }),
    kvm.create(BUCKETS.requests, { history: 1, replicas, ttl: 24 * 3600 * 1000, description: 'forky: idempotent requests and their replies' }),
  ]);
  return { hosts, locator, requests };
}
