import { z } from 'zod';
import { ChildEnv, ForkSource, HostId, IdempotencyKey, ImageName, Labels, SnapshotId, VmId, labelsMatch } from './ids.js';
import { Accel, VmInfo } from './vm.js';
import { AppList } from './app.js';
import { NetworkPolicy } from './network.js';
import { IdleRule, TtlMs } from './lifecycle.js';
import { TemplateName } from './template.js';

/**
 * What a restore must match exactly: QEMU loads saved device state only into the same
 * accelerator, QEMU version, machine type, CPU model, vCPU count and RAM size (and the disk
 * under it must be the same image), so a mismatch is refused before QEMU is started.
 */
/**
 * The version of the device set a VM gets (QEMU's command line): bumped whenever a device is added,
 * removed or changed. 2: the 4th virtio-serial port (self-fork, issue 22).
 */
export const DEVICE_SET = 2;

export const MachineProfile = z.strictObject({
  accel: Accel,
  qemuVersion: z.string(),
  machine: z.string(),
  cpuModel: z.string(),
  cpus: z.number().int(),
  memMiB: z.number().int(),
  imageId: z.string(),
  /**
   * The device set the VM ran with (DEVICE_SET then). Optional only so that older snapshots parse:
   * one without it, or with another, restores nowhere (its saved device state would not load).
   */
  devices: z.number().int().min(1).optional(),
});
export type MachineProfile = z.infer<typeof MachineProfile>;

export const SnapshotInfo = z.strictObject({
  id: SnapshotId,
  host: HostId,
  image: ImageName,
  /** The VM that was frozen. */
  vm: VmId,
  /** The lineage: the VM's previous snapshot, or the one it was forked from; none for a VM booted from its image. */
  parentSnapshot: SnapshotId.optional(),
  /** Disk layers under the snapshot's state, image base included. */
  chainDepth: z.number().int().optional(),
  profile: MachineProfile,
  /** The VM's labels when it was taken: its children inherit them. */
  labels: Labels.optional(),
  /** The VM's TTL and idle rule when it was taken: its children get them (counted from their own start) unless the fork sets its own. */
  ttlMs: TtlMs.optional(),
  idle: IdleRule.optional(),
  createdAt: z.string(),
  /** Kept until deleted: the host's retention never expires it. */
  keep: z.literal(true).optional(),
  /**
   * When the host's retention deletes it: set while no VM runs on it, nothing forks it and no
   * snapshot descends from it on this host. Its deletion is an `expired` event naming the snapshot.
   */
  expiresAt: z.string().optional(),
  sizes: z.strictObject({ stateBytes: z.number(), ramBytes: z.number(), diskBytes: z.number() }),
  timings: z
    .strictObject({
      /** How long the VM was stopped, as hostd measured it: stop to its successor running. */
      pauseMs: z.number(),
      totalMs: z.number(),
      /** Bytes of RAM the VM had made its own since its last snapshot, copied during the pause. */
      privateBytes: z.number(),
    })
    .optional(),
});
export type SnapshotInfo = z.infer<typeof SnapshotInfo>;

export const SnapshotCreateRequest = z.strictObject({
  vm: VmId,
  /** Resume the VM once it is frozen (default: it stays paused). */
  resume: z.boolean().default(false),
  /** Never expired by the host's retention (a template's snapshot); it goes only when deleted. */
  keep: z.boolean().default(false),
  key: IdempotencyKey.optional(),
});
export type SnapshotCreateRequest = z.infer<typeof SnapshotCreateRequest>;

export const SnapshotRef = z.strictObject({ id: SnapshotId });
export type SnapshotRef = z.infer<typeof SnapshotRef>;

export const SnapshotDeleteRequest = z.strictObject({
  id: SnapshotId,
  /** Also destroy what depends on it (VMs running from it, snapshots descending from it); default: refuse. */
  cascade: z.boolean().default(false),
});
export type SnapshotDeleteRequest = z.infer<typeof SnapshotDeleteRequest>;

export const SnapshotDeleteResult = z.strictObject({
  /** Snapshots deleted, dependents (with cascade) first. */
  snapshots: z.array(SnapshotId),
  /** VMs destroyed because they depended on them (cascade only). */
  vms: z.array(VmId),
});
export type SnapshotDeleteResult = z.infer<typeof SnapshotDeleteResult>;

/** One snapshot in the lineage tree, as JetStream records it. */
export const LineageNode = z.strictObject({
  id: SnapshotId,
  parent: SnapshotId.optional(),
  host: HostId,
  image: ImageName,
  vm: VmId,
  createdAt: z.string(),
  chainDepth: z.number().int().optional(),
});
export type LineageNode = z.infer<typeof LineageNode>;

export const SnapshotTree = z.strictObject({
  /** Every recorded snapshot; roots have no parent (they froze a VM booted from its image). */
  nodes: z.array(LineageNode),
});
export type SnapshotTree = z.infer<typeof SnapshotTree>;

export const SnapshotList = z.strictObject({ snapshots: z.array(SnapshotInfo) });
export type SnapshotList = z.infer<typeof SnapshotList>;

/** `snapshot.list` filters, all of which must match. */
export const SnapshotListRequest = z.strictObject({
  labels: Labels.optional(),
  vm: VmId.optional(),
  image: ImageName.optional(),
});
export type SnapshotListRequest = z.infer<typeof SnapshotListRequest>;

export function snapshotMatches(s: SnapshotInfo, f: SnapshotListRequest): boolean {
  return labelsMatch(s.labels, f.labels) && (!f.vm || s.vm === f.vm) && (!f.image || s.image === f.image);
}

/** What one child of a fork gets of its own: labels on top of the inherited and the fork's, and an environment. */
export const ForkChild = z.strictObject({ labels: Labels.optional(), env: ChildEnv.optional() });
export type ForkChild = z.infer<typeof ForkChild>;

export const MAX_FORK_COUNT = 1000;

/** The fork request's fields, for schemas built on it (a refined schema cannot be omitted from). */
export const ForkRequestShape = z.strictObject({
  /** A VM (snapshotted first) or a snapshot. */
  source: ForkSource,
  count: z.number().int().min(1).max(MAX_FORK_COUNT),
  /** When the source is a VM: keep it running (a live fork; default: it stays paused). */
  resumeParent: z.boolean().default(false),
  /**
   * When the fork returns. `ready`: each child runs, its agent answers and its identity is set.
   * `running`: as soon as each child's vCPUs run; its identity and agent follow within tens of
   * milliseconds, and any exec waits for them.
   */
  until: z.enum(['ready', 'running']).default('ready'),
  /** App layers every child mounts once it runs, on top of what it inherited. */
  apps: AppList.optional(),
  /** Added to every child's labels, on top of those it inherits from the source. */
  labels: Labels.optional(),
  /** One entry per child, in order: `count` entries exactly. */
  perChild: z.array(ForkChild).max(MAX_FORK_COUNT).optional(),
  /** Every child's TTL, counted from its start, instead of the source's. */
  ttlMs: TtlMs.optional(),
  /** Every child's idle rule instead of the source's. */
  idle: IdleRule.optional(),
  key: IdempotencyKey.optional(),
});

/** `perChild`, when given, has one entry per child (a refinement: apply it after extend/omit). */
export function perChildFitsCount(r: { count: number; perChild?: unknown[] | undefined }, ctx: z.RefinementCtx): void {
  if (r.perChild && r.perChild.length !== r.count)
    ctx.addIssue({ code: 'custom', path: ['perChild'], message: `has ${r.perChild.length} entries for count ${r.count}: one per child` });
}

/**
 * A host's fork. `network`: every child's egress instead of the source's, in force before its
 * vCPUs run (a template boot's; the scheduler's fork does not take it, nor `template`).
 */
export const ForkRequest = ForkRequestShape.extend({
  network: NetworkPolicy.optional(),
  /** A template boot's: the template's name, recorded on every child (`vm.list {template}`). */
  template: TemplateName.optional(),
}).superRefine(perChildFitsCount);
export type ForkRequest = z.infer<typeof ForkRequest>;

/** What moving a snapshot between a host and the object store did. */
export const TransferResult = z.strictObject({
  id: SnapshotId,
  host: HostId,
  parts: z.number().int(),
  /** Parts that actually moved (the others were already there). */
  moved: z.number().int(),
  /** Bytes on the wire: zero chunks and parts already present are not sent. */
  bytes: z.number().int(),
  /** What the parts would weigh as plain files. */
  nominalBytes: z.number().int(),
  ms: z.number(),
});
export type TransferResult = z.infer<typeof TransferResult>;

export const ForkResult = z.strictObject({
  snapshot: SnapshotInfo,
  children: z.array(VmInfo),
  /** Snapshot transfers a cross-host fork needed (none when every child runs at home). */
  transfers: z.array(TransferResult).optional(),
  timings: z.strictObject({
    snapshotMs: z.number(),
    /** How long the source VM was stopped, when the fork snapshotted one. */
    pauseMs: z.number().optional(),
    totalMs: z.number(),
    /** Per child, request start to the child's agent answering. */
    childMs: z.array(z.number()),
  }),
});
export type ForkResult = z.infer<typeof ForkResult>;

/**
 * fork.abandon (host-only, the scheduler's): the caller of the keyed fork `key` gave it up for
 * good (its share was placed elsewhere, or the whole fork failed), so its children are destroyed,
 * now or when it ends, and the key is forgotten: a fork under it later runs anew.
 */
export const ForkAbandonRequest = z.strictObject({ key: IdempotencyKey });
export type ForkAbandonRequest = z.infer<typeof ForkAbandonRequest>;
export const ForkAbandonResult = z.strictObject({
  /** `running`: its children go when it ends; `done`: they are gone; `none`: no fork under that key here. */
  found: z.enum(['running', 'done', 'none']),
  /** The children destroyed (for `done`). */
  destroyed: z.array(VmId),
});
export type ForkAbandonResult = z.infer<typeof ForkAbandonResult>;
