import { z } from 'zod';
import { ForkSource, HostId, IdempotencyKey, ImageName, SnapshotId, VmId } from './ids.js';
import { Accel, VmInfo } from './vm.js';

/**
 * What a restore must match exactly: device state is not portable across any of these
 * (../shared/notes/qemu-fork-facts.md), so a mismatch is refused before QEMU is started.
 */
export const MachineProfile = z.strictObject({
  accel: Accel,
  qemuVersion: z.string(),
  machine: z.string(),
  cpuModel: z.string(),
  cpus: z.number().int(),
  memMiB: z.number().int(),
  imageId: z.string(),
});
export type MachineProfile = z.infer<typeof MachineProfile>;

export const SnapshotInfo = z.strictObject({
  id: SnapshotId,
  host: HostId,
  image: ImageName,
  /** The VM that was frozen. */
  vm: VmId,
  /** The snapshot the frozen VM was itself forked from: the lineage. */
  parentSnapshot: SnapshotId.optional(),
  profile: MachineProfile,
  createdAt: z.string(),
  sizes: z.strictObject({ stateBytes: z.number(), ramBytes: z.number(), diskBytes: z.number() }),
});
export type SnapshotInfo = z.infer<typeof SnapshotInfo>;

export const SnapshotCreateRequest = z.strictObject({
  vm: VmId,
  /** Resume the VM once it is frozen (default: it stays paused). */
  resume: z.boolean().default(false),
  key: IdempotencyKey.optional(),
});
export type SnapshotCreateRequest = z.infer<typeof SnapshotCreateRequest>;

export const SnapshotRef = z.strictObject({ id: SnapshotId });
export type SnapshotRef = z.infer<typeof SnapshotRef>;

export const SnapshotList = z.strictObject({ snapshots: z.array(SnapshotInfo) });
export type SnapshotList = z.infer<typeof SnapshotList>;

export const MAX_FORK_COUNT = 1000;

export const ForkRequest = z.strictObject({
  /** A VM (snapshotted first) or a snapshot. */
  source: ForkSource,
  count: z.number().int().min(1).max(MAX_FORK_COUNT),
  /** When the source is a VM: resume it after the snapshot (default: it stays paused). */
  resumeParent: z.boolean().default(false),
  key: IdempotencyKey.optional(),
});
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
    totalMs: z.number(),
    /** Per child, request start to the child's agent answering. */
    childMs: z.array(z.number()),
  }),
});
export type ForkResult = z.infer<typeof ForkResult>;
