import { ConflictError, ValidationError, newId } from '@forky/base';
import { DEVICE_SET, quoteText, type BootRequest, type Egress, type VmInfo } from '@forky/contract';
import { admitVms, ramNeed, type RamHold } from '../admission.js';
import { bootDevices } from '../apps.js';
import type { Host } from '../host.js';
import { setLifetime } from '../lifetimes.js';
import { withRollback, type Rollback } from '../rollback.js';
import { rootOf } from '../self-fork-tree.js';
import { makeVm } from './make.js';

/** Boots a VM from an image: admitted first (VMs, memory, RAM directory, GPUs, apps), then made. */
export async function boot(host: Host, req: BootRequest, hold: RamHold): Promise<VmInfo> {
  const { d } = host;
  const image = await d.images.get(req.image);
  const diskVirtualSize = diskSizeOf(req, image.diskVirtualSize);
  await admitVms(host, req.memMiB + 64, 1);
  const id = newId('vm');
  await hold.admit(ramNeed.boot(d.layout.vmRam(id), req.memMiB), 'memMiB');
  const rec = host.newRecord(id, image, req.memMiB, req.cpus, 'booting', {
    ram: { file: d.layout.vmRam(id), shared: true },
    kernelCmdline: `${image.cmdline} forky.hostname=${id}`,
    chain: [],
  });
  rec.diskVirtualSize = diskVirtualSize;
  rec.devices = DEVICE_SET;
  if (req.key) rec.requestKey = req.key;
  rec.egress = req.network?.egress ?? host.defaultEgress();
  if (req.labels && Object.keys(req.labels).length > 0) rec.labels = { ...req.labels };
  if (req.selfFork) rec.selfFork = rootOf(id, req.selfFork);
  setLifetime(rec, req);
  return withRollback(host.log, { vm: id }, async (rb) => {
    // First: a policy this host cannot enforce is refused before anything is made.
    await host.filterNetwork(rb, id, rec.egress as Egress);
    if (req.name) await claimName(host, rb, id, req.name);
    if (req.name) rec.name = req.name;
    const gpus = host.gpus.take(id, req.gpus);
    rb.push('give back the GPUs', () => host.gpus.release(id));
    if (gpus.length > 0) rec.gpus = gpus.map((g) => ({ group: g.group, functions: g.functions }));
    const unpin = await host.apps.prefetch(req.apps ?? []);
    try {
      const base = await d.layers.importImage(image);
      if (req.apps?.length) rec.apps = bootDevices(req.apps);
      rec.chain.push(base);
      return await makeVm(host, rb, rec, image, base, async (spec, rb) => {
        const h = await d.runtime.boot(spec, d.limits.bootTimeoutMs);
        rb.push('stop the process', () => d.runtime.destroy(h));
        await host.apps.mountAll(rec, h);
        return h;
      });
    } finally {
      unpin();
    }
  });
}

/** Takes the VM's name in the cluster (CONFLICT naming `name` if taken); given back on rollback. */
async function claimName(host: Host, rb: Rollback, id: string, name: string): Promise<void> {
  const here = [...host.vms.values()].find((v) => v.name === name);
  if (here) throw new ConflictError(`name ${quoteText(name)} is taken by VM ${here.id}`, { field: 'name' });
  if (!host.dir.claimName) return;
  await host.dir.claimName(name, id);
  rb.push(`give back the name ${name}`, () => host.dir.releaseName?.(name, id));
}

/** The VM's disk size: `diskGiB` when given (a sparse top layer; never below the image's file system), else the image's. */
function diskSizeOf(req: BootRequest, imageBytes: number): number {
  if (req.diskGiB === undefined) return imageBytes;
  const bytes = req.diskGiB * 2 ** 30;
  if (bytes < imageBytes)
    throw new ValidationError(`diskGiB ${req.diskGiB} is below the image's disk (${imageBytes / 2 ** 30} GiB)`, { field: 'diskGiB' });
  return bytes;
}
