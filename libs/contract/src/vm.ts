import { z } from 'zod';
import { HostId, IdempotencyKey, ImageName, Labels, SnapshotId, VmId, VmName, labelsMatch } from './ids.js';
import { AppList, AppMount } from './app.js';
import { NetworkInfo, NetworkPolicy } from './network.js';
import { IdleRule, LifecycleInfo, TtlMs } from './lifecycle.js';
import { TemplateName } from './template.js';
import { SelfForkInfo, SelfForkPolicy } from './self-fork.js';

/** `lost`: shown by the scheduler for a VM whose host stopped reporting; hostd never uses it. */
export const VM_STATES = [
  'booting',
  'restoring',
  'running',
  'paused',
  'snapshotting',
  'destroying',
  'destroyed',
  'failed',
  'lost',
] as const;
export const VmState = z.enum(VM_STATES);
export type VmState = z.infer<typeof VmState>;

export const Accel = z.enum(['kvm', 'tcg']);
export type Accel = z.infer<typeof Accel>;

export const VmInfo = z.strictObject({
  id: VmId,
  host: HostId,
  state: VmState,
  image: ImageName,
  /** Unique in the cluster; children have none. */
  name: VmName.optional(),
  /** A child's are its parent's, with the fork's own on top. */
  labels: Labels.optional(),
  memMiB: z.number().int(),
  cpus: z.number().int(),
  accel: Accel,
  /** The snapshot this VM was forked from, if any. */
  parentSnapshot: SnapshotId.optional(),
  /** The template it was booted from (`vm.boot {template}`). */
  template: TemplateName.optional(),
  createdAt: z.string(),
  /** The QEMU process; a failed VM has none. */
  pid: z.number().int().optional(),
  /** For a failed VM: when its process was found gone, and why. */
  failure: z.strictObject({ at: z.string(), reason: z.string() }).optional(),
  /** The NIC's MAC address; every VM has its own, children included. */
  mac: z.string().optional(),
  /** PCI addresses of the host GPU functions passed through to it (VFIO). */
  gpus: z.array(z.string()).optional(),
  /** App layers mounted in the guest (overlay: read-only layer, writes kept on the VM's own disk). */
  apps: z.array(AppMount).optional(),
  /** Its egress policy and how this host enforces it (README "Network isolation"). */
  network: NetworkInfo.optional(),
  /** Milliseconds spent in each step of making this VM. */
  timings: z.record(z.string(), z.number()).optional(),
  /** Its TTL and idle rule, when it has either (lifecycle.ts). */
  lifecycle: LifecycleInfo.optional(),
  /** Its self-fork policy and standing, when it may self-fork (self-fork.ts). */
  selfFork: SelfForkInfo.optional(),
});
export type VmInfo = z.infer<typeof VmInfo>;

export const BootRequest = z.strictObject({
  image: ImageName.default('tiny'),
  memMiB: z.number().int().min(64).max(65536).default(256),
  cpus: z.number().int().min(1).max(64).default(1),
  /** Host GPUs passed through (VFIO), each a whole IOMMU group. Such a VM cannot be snapshotted or forked. */
  gpus: z.number().int().min(0).max(16).default(0),
  /** App layers to mount once the guest is up. */
  apps: AppList.optional(),
  /** Where the guest may connect; default `{egress: "internet"}` (public addresses only). */
  network: NetworkPolicy.optional(),
  /** Virtual size of the VM's disk (sparse; the guest grows its file system to fit); default: the image's, never less. */
  diskGiB: z.number().int().min(1).max(1024).optional(),
  /** Unique in the cluster: a boot with a name already taken is refused (CONFLICT). */
  name: VmName.optional(),
  labels: Labels.optional(),
  /** Destroyed this long after it was made (an `expired` event); `vm.extend` moves the deadline. */
  ttlMs: TtlMs.optional(),
  /** Paused or destroyed after this long without activity (lifecycle.ts). */
  idle: IdleRule.optional(),
  /** Lets the guest fork itself (`forky-fork`) within this budget; default: it may not. */
  selfFork: SelfForkPolicy.optional(),
  key: IdempotencyKey.optional(),
});
export type BootRequest = z.infer<typeof BootRequest>;

export const VmRef = z.strictObject({ id: VmId });

/**
 * Mounts app layers in a running VM: a layer at a new mount point is added; at a mount point the
 * VM already has, it replaces the old layer (the VM's own writes there stay on top).
 */
export const VmAppRequest = z.strictObject({
  id: VmId,
  apps: AppList.min(1),
  key: IdempotencyKey.optional(),
});
export type VmAppRequest = z.infer<typeof VmAppRequest>;
export type VmRef = z.infer<typeof VmRef>;

export const VmList = z.strictObject({ vms: z.array(VmInfo) });

/** `vm.list` filters, all of which must match: every label given, one of the states, the image, the template, the parent snapshot. */
export const VmListRequest = z.strictObject({
  labels: Labels.optional(),
  state: z.array(VmState).min(1).max(VM_STATES.length).optional(),
  image: ImageName.optional(),
  template: TemplateName.optional(),
  parent: SnapshotId.optional(),
});
export type VmListRequest = z.infer<typeof VmListRequest>;

export function vmMatches(v: VmInfo, f: VmListRequest): boolean {
  return (
    labelsMatch(v.labels, f.labels) &&
    (!f.state || f.state.includes(v.state)) &&
    (!f.image || v.image === f.image) &&
    (!f.template || v.template === f.template) &&
    (!f.parent || v.parentSnapshot === f.parent)
  );
}
export type VmList = z.infer<typeof VmList>;

export const ExecRequest = z.strictObject({
  id: VmId,
  cmd: z.array(z.string().max(65536)).min(1).max(256),
  timeoutMs: z.number().int().min(1).max(600_000).default(30_000),
  /** Text passed to the command's standard input (at most 512 KiB: the whole request must fit NATS's 1 MiB max_payload). */
  input: z
    .string()
    .max(1 << 19)
    .optional(),
  /** A repeat under the same key returns the first run's result instead of running the command again. */
  key: IdempotencyKey.optional(),
});
export type ExecRequest = z.infer<typeof ExecRequest>;

export const ExecResult = z.strictObject({
  exitCode: z.number().int(),
  stdout: z.string(),
  stderr: z.string(),
});
export type ExecResult = z.infer<typeof ExecResult>;
