import { CapacityError, IncompatibleError } from '@forky/base';
import { MachineProfile } from '@forky/contract';
import type { Image } from '../images.js';
import type { HostStats, VmRuntime } from './ports.js';

export { RamAdmission, UNLIMITED_RAM, knownRamFiles, ramNeed, type RamFile, type RamHold, type RamNeed } from './ram-admission.js';

/**
 * Every refusal an operation makes before it touches anything: room for VMs (count and memory),
 * GPUs that cannot be snapshotted, snapshots whose machine profile does not match this host.
 * RAM-directory room is ram-admission.ts (it holds what it admits until the request ends).
 */
export interface AdmissionView {
  readonly hostId: string;
  readonly runtime: VmRuntime;
  readonly stats: HostStats;
  readonly limits: { maxVms: number; reserveMiB: number };
  /** VMs on the host now. */
  vmCount(): number;
  gpusOf(vmId: string): Array<{ functions: string[] }> | undefined;
}

/** One more VM record: the last guard, for requests admitted at once that together pass the limit. */
export function admitVmRecord(h: AdmissionView): void {
  const n = h.vmCount();
  if (n >= h.limits.maxVms) throw new CapacityError(`host ${h.hostId} already runs ${n} VMs (limit ${h.limits.maxVms})`);
}

/** `count` more VMs of about `perVmMiB` each: within maxVms and the host's available memory less its reserve. */
export async function admitVms(h: AdmissionView, perVmMiB: number, count: number): Promise<void> {
  const n = h.vmCount();
  if (n + count > h.limits.maxVms) {
    throw new CapacityError(`host ${h.hostId} cannot take ${count} more VMs: it runs ${n}, limit ${h.limits.maxVms}`, { field: 'count' });
  }
  const { availableMiB } = await h.stats.meminfo();
  const need = perVmMiB * count;
  if (need > availableMiB - h.limits.reserveMiB) {
    throw new CapacityError(
      `host ${h.hostId} has ${availableMiB} MiB available (${h.limits.reserveMiB} reserved); ${count} VM(s) need about ${need} MiB`,
      {
        field: 'count',
      },
    );
  }
}

/**
 * The fork rule for GPUs: a VM holding a passed-through GPU is never snapshotted, so never
 * forked. QEMU cannot save a VFIO device's state (it blocks migration), and a child must not
 * share its parent's device. Refused before anything is touched; the VM keeps running.
 */
export function refuseGpuSnapshot(h: AdmissionView, vmId: string, field: string): void {
  const gpus = h.gpusOf(vmId);
  if (!gpus?.length) return;
  const fns = gpus.flatMap((g) => g.functions).join(', ');
  throw new IncompatibleError(
    `VM ${vmId} holds passed-through GPU ${fns}: a VFIO device's state cannot be saved or cloned, so this VM cannot be snapshotted or forked. Fork a VM booted without --gpus, and boot GPU VMs from the image`,
    { field, gpus: fns },
  );
}

/**
 * A VM's profile for its snapshot: this host's for its size, with the device set of the VM's own
 * QEMU process (its record's), not this hostd's; none recorded (a VM an older hostd started), none said.
 */
export function vmProfile(
  runtime: Pick<VmRuntime, 'profile'>,
  vm: { memMiB: number; cpus: number; imageId: string; devices?: number },
): MachineProfile {
  const { devices: _, ...here } = runtime.profile(vm.memMiB, vm.cpus, vm.imageId);
  return vm.devices === undefined ? here : { ...here, devices: vm.devices };
}

/**
 * A snapshot restores only on a host whose machine profile for it is the same, field by field,
 * each side normalised first: an absent `devices` is set 1 (before device sets were versioned),
 * so a profile that says 1 and one that says none agree (the fields compared are the schema's, not either side's keys).
 */
export function checkProfile(h: AdmissionView, p: MachineProfile, image: Pick<Image, 'id'>): void {
  const norm = (x: MachineProfile): MachineProfile & { devices: number } => ({ ...x, devices: x.devices ?? 1 });
  const [snap, here] = [norm(p), norm(h.runtime.profile(p.memMiB, p.cpus, image.id))];
  const diff = MachineProfile.keyof().options.filter((k) => snap[k] !== here[k]);
  if (diff.length === 0) return;
  const hint =
    diff.includes('devices') && snap.devices < here.devices
      ? ': the snapshot was made by an older hostd (or of a VM one started), whose device state this one cannot load; re-create it from a VM this hostd started (for a template: re-create the template)'
      : '';
  throw new IncompatibleError(
    `snapshot cannot be restored on host ${h.hostId}: ${diff.map((k) => `${k} is ${String(snap[k])} in the snapshot, ${String(here[k])} here`).join('; ')}${hint}`,
    { fields: diff },
  );
}
