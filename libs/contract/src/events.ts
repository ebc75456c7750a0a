import { z } from 'zod';
import { HostId, ImageName, Labels, SnapshotId, VmId } from './ids.js';
import { MAX_FORK_COUNT } from './snapshot.js';
import { VmState } from './vm.js';

/**
 * What happened to a VM or snapshot (STREAMS.md "Events"), published by its host as JSON on
 * `forky.v1.events.<host>.<kind>`. Core NATS, fire and forget: a subscriber that is away or slow
 * misses events; the VM's state is always in `vm.show`.
 */
export const EVENT_KINDS = ['created', 'ready', 'paused', 'resumed', 'forked', 'snapshot', 'destroyed', 'failed', 'expired'] as const;
export const EventKind = z.enum(EVENT_KINDS);
export type EventKind = z.infer<typeof EventKind>;

export const EVENT_REASON_MAX_BYTES = 1024;

export const VmEvent = z.strictObject({
  v: z.literal(1),
  kind: EventKind,
  at: z.iso.datetime(),
  host: HostId,
  vm: VmId.optional(),
  snapshot: SnapshotId.optional(),
  state: VmState.optional(),
  /** A child's source snapshot (or a snapshot's parent in the lineage). */
  parent: SnapshotId.optional(),
  /** `forked`: the children made, all of them. */
  children: z.array(VmId).max(MAX_FORK_COUNT).optional(),
  image: ImageName.optional(),
  /** The VM's labels (a snapshot's: those of the VM it was taken of), when it has any. */
  labels: Labels.optional(),
  /**
   * `failed`: why, as hostd saw it (may quote guest or QEMU text: escape before showing);
   * `forked`: `self-fork` when the VM's own guest asked (`vm` is that VM).
   */
  reason: z
    .string()
    .refine((s) => Buffer.byteLength(s) <= EVENT_REASON_MAX_BYTES, `at most ${EVENT_REASON_MAX_BYTES} bytes`)
    .optional(),
});
export type VmEvent = z.infer<typeof VmEvent>;
