import type { HostInfo } from '@forky/contract';
import type { Host } from '../host.js';

/** What this host is and holds, with its memory as its kernel reports it (for heartbeats and `host.info`). */
export async function hostInfo(host: Host): Promise<HostInfo> {
  const { d } = host;
  const mem = await d.stats.meminfo();
  const pss = await Promise.all(
    [...host.vms.values()].map(async (v) => ({ child: !!v.parentSnapshot, mib: v.pid ? await d.stats.pssMiB(v.pid) : 0 })),
  );
  const children = pss
    .filter((p) => p.child && p.mib > 0)
    .map((p) => p.mib)
    .sort((a, b) => a - b);
  return {
    memCommittedMiB: Math.round(pss.reduce((a, p) => a + p.mib, 0)),
    childPssMiB: Math.round((children[Math.floor(children.length / 2)] ?? 0) * 10) / 10,
    ksmSavedMiB: await d.stats.ksmSavedMiB(),
    gpus: { total: host.gpus.total, free: host.gpus.free },
    id: d.hostId,
    accel: d.runtime.accel,
    accelReason: d.accelReason,
    qemuVersion: d.runtime.qemuVersion,
    cpus: d.stats.cpus(),
    memTotalMiB: mem.totalMiB,
    memFreeMiB: mem.availableMiB,
    vms: host.vms.size,
    snapshots: host.snaps.size,
    images: await d.images.list(),
  };
}
