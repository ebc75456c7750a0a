import { ValidationError, newId } from '@forky/base';
import type { BootRequest, Egress, VmInfo } from '@forky/contract';
import { admitVms, ramNeed, type RamHold } from '../admission.js';
import { bootDevices } from '../apps.js';
import type { Host } from '../host.js';
import { withRollback } from '../rollback.js';
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
  if (req.key) rec.requestKey = req.key;
  rec.egress = req.network?.egress ?? host.defaultEgress();
  return withRollback(host.log, { vm: id }, async (rb) => {
    // First: a policy this host cannot enforce is refused before anything is made.
    await host.filterNetwork(rb, id, rec.egress as Egress);
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

/** The VM's disk size: `diskGiB` when given (a sparse top layer; never below the image's file system), else the image's. */
function diskSizeOf(req: BootRequest, imageBytes: number): number {
  if (req.diskGiB === undefined) return imageBytes;
  const bytes = req.diskGiB * 2 ** 30;
  if (bytes < imageBytes)
    throw new ValidationError(`diskGiB ${req.diskGiB} is below the image's disk (${imageBytes / 2 ** 30} GiB)`, { field: 'diskGiB' });
  return bytes;
}
