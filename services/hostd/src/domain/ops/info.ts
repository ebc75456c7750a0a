import type { HostInfo } from '@forky/contract';
import type { Host } from '../host.js';
import { PssSamples } from '../pss-samples.js';

/** Each host's samples (an engine per host; tests make several in one process). */
const samples = new WeakMap<Host, PssSamples>();

/** What this host is and holds, with its memory as its kernel reports it (for heartbeats and `host.info`). */
export async function hostInfo(host: Host): Promise<HostInfo> {
  const { d } = host;
  const mem = await d.stats.meminfo();
  let sampled = samples.get(host);
  if (!sampled) samples.set(host, (sampled = new PssSamples()));
  const pss = await sampled.of(host.vms.values(), (pid) => d.stats.pssMiB(pid));
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
