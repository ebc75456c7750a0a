import type { Egress, IdleRule, Labels, LifecycleInfo, NetworkEnforcement, SnapshotInfo, VmInfo, VmState } from '@forky/contract';
import type { VmHandle } from './ports.js';
import { mountedApps, type AppDevice } from './apps.js';
import { selfForkInfo, type SelfForkPolicy, type SelfForkRecord } from './self-fork-tree.js';

/** What hostd knows of one VM; `handle` only while its process is ours. */
export interface VmRecord {
  id: string;
  image: string;
  imageId: string;
  memMiB: number;
  cpus: number;
  state: VmState;
  createdAt: string;
  /** Unique in the cluster (held in the locator bucket while the VM exists); children have none. */
  name?: string;
  labels?: Labels;
  /** The snapshot this VM was forked from. */
  parentSnapshot?: string;
  /** The template it was booted from (a template boot's fork). */
  template?: string;
  /** Its TTL (the last one set: at birth or by `vm.extend`), and when it passes (epoch ms). */
  ttlMs?: number;
  expiresAt?: number;
  idle?: IdleRule;
  /** Epoch ms of its last activity (lifetimes.ts): what the idle rule counts from. */
  lastActivityAt: number;
  /** Set while it is paused by its idle rule: a touch resumes it (a user's pause is never undone so). */
  pausedBy?: 'idle';
  /** The snapshot the VM's state last came from or went to: the parent of its next snapshot. */
  lineage?: string;
  /**
   * The device set (DEVICE_SET) of the QEMU process hostd started for it, whose device state its
   * successors carry on: absent for a VM an older hostd started (its snapshots restore nowhere).
   */
  devices?: number;
  /** Which QEMU process of the VM runs now: each snapshot hands over to a successor. */
  generation: number;
  mac: string;
  /** GPUs passed through: IOMMU groups and their PCI functions. */
  gpus?: Array<{ group: string; functions: string[] }>;
  /** App disks plugged in (on its command line or hot-plugged), and where the guest mounts each. */
  apps?: AppDevice[];
  /** Disk layers, bottom (image base) to top (the VM's own writable layer). */
  chain: string[];
  ram: { file: string; shared: boolean };
  /** Where its guest may connect; a record written before policies existed has none and means `internet`. */
  egress?: Egress;
  kernelCmdline: string;
  diskVirtualSize: number;
  timings: Record<string, number>;
  pid?: number;
  /** Set when its process died (with hostd up or down): when that was seen, and why. */
  failure?: { at: string; reason: string };
  handle?: VmHandle;
  /** For a child returned at `running`: its identity and agent, still being settled. */
  settling?: Promise<void>;
  /** The idempotency key of the request that made it: a restart keeps it only if that request finished. */
  requestKey?: string;
  /** A snapshot being taken, persisted before the pause, so a restart can roll it back or forward. */
  snapshotPlan?: { id: string; top: string; from: VmState; ownRam?: string };
  /** Its self-fork policy and standing (self-fork-tree.ts), when it may self-fork. */
  selfFork?: SelfForkRecord;
}

export interface SnapshotRecord {
  info: SnapshotInfo;
  /** For a copy fetched from another host: that host. The origin owns the published manifest. */
  origin?: string;
  /** This host put its manifest in the object store: others may fork it, so retention never expires it. */
  published?: true;
  /** Disk layers, bottom to the layer frozen by this snapshot. */
  chain: string[];
  kernelCmdline: string;
  diskVirtualSize: number;
  /** The VM's app disks when it was frozen: its successor and children start with the same devices. */
  apps?: AppDevice[];
  /** The VM's egress policy when it was frozen: its children start with it. */
  egress?: Egress;
  /** The VM's self-fork policy when it was frozen: each child of an outside fork is the root of a tree with it. */
  selfFork?: SelfForkPolicy;
}

/** A record's policy: one written before policies existed means `internet`, what every VM had then. */
export const egressOf = (r: { egress?: Egress }): Egress => r.egress ?? 'internet';

export function vmInfo(r: VmRecord, host: string, accel: VmInfo['accel'], enforcedBy: NetworkEnforcement): VmInfo {
  const apps = mountedApps(r.apps);
  return {
    id: r.id,
    host,
    state: r.state,
    image: r.image,
    ...(r.name ? { name: r.name } : {}),
    ...(r.labels && Object.keys(r.labels).length > 0 ? { labels: r.labels } : {}),
    memMiB: r.memMiB,
    cpus: r.cpus,
    accel,
    createdAt: r.createdAt,
    ...(r.parentSnapshot ? { parentSnapshot: r.parentSnapshot } : {}),
    ...(r.template ? { template: r.template } : {}),
    // A failed VM's pid is a dead process's (or, later, someone else's).
    ...(r.pid && r.state !== 'failed' ? { pid: r.pid } : {}),
    ...(r.failure ? { failure: r.failure } : {}),
    mac: r.mac,
    ...(r.gpus?.length ? { gpus: r.gpus.flatMap((g) => g.functions) } : {}),
    ...(apps ? { apps } : {}),
    network: { egress: egressOf(r), enforcedBy },
    timings: r.timings,
    ...(r.ttlMs !== undefined || r.idle ? { lifecycle: lifecycleOf(r) } : {}),
    ...(r.selfFork ? { selfFork: selfForkInfo(r.selfFork) } : {}),
  };
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** A VM's TTL and idle rule as `vm.show` reports them. */
function lifecycleOf(r: VmRecord): LifecycleInfo {
  return {
    ...(r.ttlMs !== undefined ? { ttlMs: r.ttlMs } : {}),
    ...(r.expiresAt !== undefined ? { expiresAt: iso(r.expiresAt) } : {}),
    ...(r.idle ? { idle: r.idle } : {}),
    lastActivityAt: iso(r.lastActivityAt),
    ...(r.pausedBy ? { pausedBy: r.pausedBy } : {}),
  };
}

/**
 * Marks a VM whose QEMU is gone as failed: no process, no pid, no GPUs (a dead process holds no
 * device), no snapshot in progress, and why. Its record, logs and disk stay until it is destroyed.
 */
export function markFailed(vm: VmRecord, reason: string): void {
  vm.state = 'failed';
  vm.failure = { at: new Date().toISOString(), reason };
  vm.handle = undefined;
  delete vm.pid;
  delete vm.gpus;
  delete vm.snapshotPlan;
}

export function recordForDisk(r: VmRecord): Omit<VmRecord, 'handle' | 'settling'> {
  const { handle: _handle, settling: _settling, ...rest } = r;
  return rest;
}
