import type { KV } from '@nats-io/kv';
import type { LineageNode, SnapshotInfo } from '@forky/contract';
import { retryTransient } from '@forky/bus';
import type { Directory } from '../domain/ports.js';

/**
 * The cluster's directory in JetStream KV: the locator (`vm.<id>` / `snap.<id>` -> `{ host }`) and
 * the lineage (`<snapshot id>` -> its node in the tree). Every write is idempotent, and is tried
 * again while the cluster is failing over (a lost locator entry would orphan a VM).
 */
export class KvDirectory implements Directory {
  constructor(
    private readonly locator: KV,
    private readonly lineage: KV,
    private readonly hostId: string,
  ) {}

  async register(kind: 'vm' | 'snap', id: string): Promise<void> {
    await retryTransient('locator put', () => this.locator.put(`${kind}.${id}`, JSON.stringify({ host: this.hostId })));
  }

  async unregister(kind: 'vm' | 'snap', id: string): Promise<void> {
    await retryTransient('locator delete', () => this.locator.delete(`${kind}.${id}`));
  }

  async recordLineage(info: SnapshotInfo): Promise<void> {
    const node: LineageNode = {
      id: info.id,
      ...(info.parentSnapshot ? { parent: info.parentSnapshot } : {}),
      host: info.host,
      image: info.image,
      vm: info.vm,
      createdAt: info.createdAt,
      ...(info.chainDepth === undefined ? {} : { chainDepth: info.chainDepth }),
    };
    await retryTransient('lineage put', () => this.lineage.put(info.id, JSON.stringify(node)));
  }

  async forgetLineage(id: string): Promise<void> {
    await retryTransient('lineage delete', () => this.lineage.delete(id));
  }
}
