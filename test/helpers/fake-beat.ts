import type { Heartbeat, HostInfo } from '@forky/contract';

/** What a fake host of ours says of itself (host.info): room for children; `o` sets what a test looks at. */
export function fakeHostInfo(id: string, o: Partial<HostInfo> = {}): HostInfo {
  return {
    id,
    accel: 'tcg',
    accelReason: 'fake',
    qemuVersion: '7.2.0',
    cpus: 2,
    memTotalMiB: 8192,
    memFreeMiB: 4096,
    vms: 0,
    snapshots: 0,
    images: ['tiny'],
    memCommittedMiB: 0,
    childPssMiB: 0,
    ksmSavedMiB: 0,
    gpus: { total: 0, free: 0 },
    ...o,
  };
}

/** A heartbeat as a fake host of ours sends it: alive, room for children; `o` sets what a test looks at. */
export function fakeBeat(id: string, o: Partial<Heartbeat> = {}): Heartbeat {
  return {
    ...fakeHostInfo(id),
    ts: Date.now(),
    intervalMs: 1_000,
    instance: `${id}-1`,
    vmList: [],
    snapshotIds: [],
    ...o,
  };
}
