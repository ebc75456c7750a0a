import type { NatsConnection } from '@nats-io/nats-core';
import { Kvm, type KV, type KvOptions } from '@nats-io/kv';
import { z } from 'zod';
import { BUCKETS } from '@forky/contract';

export interface Buckets {
  hosts: KV;
  locator: KV;
  requests: KV;
  lineage: KV;
  /** Templates by name, and retired template snapshots (`retired.<id>`); the scheduler's alone. */
  templates: KV;
}

/**
 * Opens (creating if missing) the KV buckets the cluster keeps its state in. `replicas` is 3
 * where a 3-node JetStream cluster exists; finished requests are kept a day for idempotency.
 */
export async function openBuckets(nc: NatsConnection, opts: { replicas?: number } = {}): Promise<Buckets> {
  const kvm = new Kvm(nc);
  const replicas = opts.replicas ?? 1;
  const kv = (name: string, opts: Partial<KvOptions>): Promise<KV> =>
    createOrOpen(
      () => kvm.create(name, { history: 1, replicas, ...opts }),
      () => bindExisting(kvm.open(name)),
      `KV bucket ${name}`,
    );
  const [hosts, locator, requests, lineage, templates] = await Promise.all([
    kv(BUCKETS.hosts, { description: 'forky: host heartbeats' }),
    kv(BUCKETS.locator, { description: 'forky: which host holds each VM and snapshot' }),
    kv(BUCKETS.requests, { ttl: 24 * 3600 * 1000, description: 'forky: idempotent requests and their replies' }),
    kv(BUCKETS.lineage, { description: 'forky: every snapshot and its parent snapshot' }),
    kv(BUCKETS.templates, { description: 'forky: templates by name, and retired template snapshots' }),
  ]);
  return { hosts, locator, requests, lineage, templates };
}

/**
 * A bound KV bucket or object store, once its status proves it exists: open() only binds a name,
 * and a create that failed while a cluster was electing its leader would otherwise leave a
 * handle to nothing.
 */
export async function bindExisting<T extends { status(): Promise<unknown> }>(bound: Promise<T>): Promise<T> {
  const store = await bound;
  await store.status();
  return store;
}

/**
 * Creates a bucket or binds the existing one. Several processes starting at once race to create
 * the same stream; the loser's create fails ("subjects overlap with an existing stream"), and on
 * a fresh cluster an R3 stream can take seconds to be placed and answer. So: create, else bind,
 * again with backoff until the deadline.
 */
export async function createOrOpen<T>(create: () => Promise<T>, open: () => Promise<T>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (let attempt = 0; ; attempt++) {
    for (const step of [create, open]) {
      try {
        return await step();
      } catch (e) {
        last = e;
      }
    }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
  }
  throw new Error(`cannot create or open ${what} within ${timeoutMs} ms: ${(last as Error)?.message ?? last}`, { cause: last });
}

/** `bucketReplicas` in a config: a number, or `auto` (3 on a JetStream cluster of 3 or more nodes, else 1). */
export const BucketReplicas = z.union([z.literal('auto'), z.number().int().min(1).max(5)]).default('auto');
export type BucketReplicas = z.infer<typeof BucketReplicas>;

/**
 * How many replicas the cluster's state gets. `auto` reads what the server told the client: the
 * cluster it is part of and its peers' client URLs (every node's, itself included). Buckets that
 * exist keep the replicas they were made with; this applies only to the ones created now.
 */
export function resolveReplicas(nc: NatsConnection, configured: BucketReplicas): number {
  if (configured !== 'auto') return configured;
  const info = nc.info;
  return info?.cluster && (info.connect_urls?.length ?? 0) >= 3 ? 3 : 1;
}
