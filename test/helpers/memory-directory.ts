import type { SnapshotInfo } from '@forky/contract';
import type { EngineDeps } from '@forky/hostd';

type Directory = NonNullable<EngineDeps['directory']>;

/** The cluster's locator and lineage in memory: what a host told the cluster it holds, and every call. */
export class MemoryDirectory implements Directory {
  readonly vms = new Set<string>();
  readonly snaps = new Set<string>();
  readonly lineage = new Map<string, SnapshotInfo>();
  readonly log: string[] = [];

  async register(kind: 'vm' | 'snap', id: string): Promise<void> {
    this.log.push(`register ${kind} ${id}`);
    (kind === 'vm' ? this.vms : this.snaps).add(id);
  }

  async unregister(kind: 'vm' | 'snap', id: string): Promise<void> {
    this.log.push(`unregister ${kind} ${id}`);
    (kind === 'vm' ? this.vms : this.snaps).delete(id);
  }

  async recordLineage(info: SnapshotInfo): Promise<void> {
    this.log.push(`lineage ${info.id}`);
    this.lineage.set(info.id, info);
  }

  async forgetLineage(id: string): Promise<void> {
    this.log.push(`forget ${id}`);
    this.lineage.delete(id);
  }
}
