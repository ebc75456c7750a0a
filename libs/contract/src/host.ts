import { z } from 'zod';
import { HostId, ImageName } from './ids.js';
import { Accel, VmInfo } from './vm.js';

export const HostInfo = z.strictObject({
  id: HostId,
  accel: Accel,
  /** Why this accelerator: the probe's outcome. */
  accelReason: z.string(),
  qemuVersion: z.string(),
  cpus: z.number().int(),
  memTotalMiB: z.number().int(),
  memFreeMiB: z.number().int(),
  vms: z.number().int(),
  snapshots: z.number().int(),
  images: z.array(ImageName),
  /** What this host's VMs really cost: the sum of their QEMU processes' Pss. */
  memCommittedMiB: z.number(),
  /** Median Pss of this host's forked children (0 before it has any): what placing one more costs. */
  childPssMiB: z.number(),
  /** Memory KSM saves by merging identical pages (0 where KSM is off). */
  ksmSavedMiB: z.number(),
  /** GPUs bound to vfio-pci that VMs can be given, and how many no VM holds. */
  gpus: z.strictObject({ total: z.number().int(), free: z.number().int() }),
});
export type HostInfo = z.infer<typeof HostInfo>;

export const Empty = z.strictObject({});
export type Empty = z.infer<typeof Empty>;

/**
 * host.ping's reply: the hostd process that answered (the heartbeat's `instance`). The scheduler
 * asks a host whose beats stopped before it gives up the calls under way there: a host busy enough
 * to beat late (100 TCG guests on 2 cores) still answers, and a dead one has no responders.
 */
export const HostPing = z.strictObject({ instance: z.string().min(1).max(64) });
export type HostPing = z.infer<typeof HostPing>;

/** What a hostd reports every heartbeat period, into the hosts KV bucket and on its heartbeat subject. */
export const Heartbeat = HostInfo.extend({
  /** When it was sent, ms since the epoch. */
  ts: z.number(),
  intervalMs: z.number().int().positive(),
  /** Names this hostd process: a new one means the host restarted, and requests in flight to it were lost. */
  instance: z.string().min(1).max(64),
  /**
   * The host's VMs as of this beat: what is shown as lost if the host stops reporting. Sent by the
   * periodic beat (and in the hosts bucket), not by the beat that follows a change within 100 ms:
   * a receiver keeps the last list it had for that host instance when a beat has none.
   */
  vmList: z.array(VmInfo).optional(),
  snapshotIds: z.array(z.string()),
  /** The host's own addresses: every other host refuses them to its VMs (README "Network isolation"). */
  addrs: z
    .array(z.union([z.ipv4(), z.ipv6()]))
    .max(64)
    .optional(),
}).strict();
export type Heartbeat = z.infer<typeof Heartbeat>;

export const HostStatus = HostInfo.extend({
  /** False once heartbeats have stopped for three periods. */
  alive: z.boolean(),
  lastSeen: z.string(),
  /** The addresses it reported (every other host refuses them to its VMs). */
  addrs: z
    .array(z.union([z.ipv4(), z.ipv6()]))
    .max(64)
    .optional(),
}).strict();
export type HostStatus = z.infer<typeof HostStatus>;

export const HostList = z.strictObject({ hosts: z.array(HostStatus) });
export type HostList = z.infer<typeof HostList>;
