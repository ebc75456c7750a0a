import type { KV, KvEntry } from '@nats-io/kv';
import { z } from 'zod';
import { ConflictError } from '@forky/base';
import { HostId, VmId, VmName, quoteText, type LineageNode, type SnapshotInfo } from '@forky/contract';
import { retryTransient } from '@forky/bus';
import type { Directory } from '../domain/ports.js';

/** `name.<name>`: which VM holds a name. Any host may write the bucket, so it is checked when read. */
const NameEntry = z.strictObject({ vm: VmId, host: HostId });

function holderOf(e: KvEntry): z.infer<typeof NameEntry> | undefined {
  try {
    const r = NameEntry.safeParse(e.json());
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The cluster's directory in JetStream KV: the locator (`vm.<id>` / `snap.<id>` -> `{ host }`) and
 * the lineage (`<snapshot id>` -> its node in the tree). Every write is idempotent, and is tried
 * again while the cluster is failing over (a lost locator entry would orphan a VM). VM names
 * live in the locator too: `name.<name>` -> `{ vm, host }`, taken with a create (so only one VM
 * gets it), and `vmname.<id>` -> the name, so that unregistering the VM gives its name back.
 */
export class KvDirectory implements Directory {
  constructor(
    private readonly locator: KV,
    private readonly lineage: KV,
    private readonly hostId: string,
  ) {}

  async hasVm(id: string): Promise<boolean> {
    const e = await retryTransient('locator get', () => this.locator.get(`vm.${id}`));
    return e?.operation === 'PUT';
  }

  async register(kind: 'vm' | 'snap', id: string): Promise<void> {
    await retryTransient('locator put', () => this.locator.put(`${kind}.${id}`, JSON.stringify({ host: this.hostId })));
  }

  async unregister(kind: 'vm' | 'snap', id: string): Promise<void> {
    await retryTransient('locator delete', () => this.locator.delete(`${kind}.${id}`));
    if (kind !== 'vm') return;
    const e = await retryTransient('name index get', () => this.locator.get(`vmname.${id}`));
    const name = e?.operation === 'PUT' ? VmName.safeParse(e.string()) : undefined;
    if (name?.success) await this.releaseName(name.data, id);
    if (e?.operation === 'PUT') await retryTransient('name index delete', () => this.locator.delete(`vmname.${id}`));
  }

  async claimName(name: string, vmId: string): Promise<void> {
    const key = `name.${name}`;
    // The index first: a name held with no index could never be given back; an index without the name is harmless.
    await retryTransient('name index put', () => this.locator.put(`vmname.${vmId}`, name));
    await retryTransient('name claim', async () => {
      try {
        await this.locator.create(key, JSON.stringify({ vm: vmId, host: this.hostId }));
      } catch (e) {
        // A create that landed before its reply was lost is this VM's own; any other holder is another VM.
        const held = await this.locator.get(key);
        if (!held || held.operation !== 'PUT') throw e;
        const holder = holderOf(held);
        if (holder?.vm === vmId) return;
        const who = holder ? `VM ${holder.vm} on host ${holder.host}` : 'an entry that is not valid';
        await retryTransient('name index delete', () => this.locator.delete(`vmname.${vmId}`));
        throw new ConflictError(`name ${quoteText(name)} is taken by ${who}`, { field: 'name' });
      }
    });
  }

  async releaseName(name: string, vmId: string): Promise<void> {
    const key = `name.${name}`;
    const held = await retryTransient('name get', () => this.locator.get(key));
    if (!held || held.operation !== 'PUT') return;
    if (holderOf(held)?.vm !== vmId) return;
    // At the revision read: a name taken again meanwhile is not this VM's to give back.
    await retryTransient('name delete', () => this.locator.delete(key, { previousSeq: held.revision })).catch((err: unknown) => {
      if (!/wrong last sequence/i.test(String(err))) throw err;
    });
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
