import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@forky/base';
import type { Gpu } from '../domain/gpus.js';

/** A PCI address as sysfs names it: domain:bus:slot.function. */
const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
/** PCI class 0x03xxxx: display controllers (VGA, 3D, other). */
const DISPLAY_CLASS = /^0x03/;
/** PCI-to-PCI bridges may stay with their own driver: the kernel does not count them against a group. */
const BRIDGE_CLASS = /^0x0604/;

export interface GpuDiscovery {
  gpus: Gpu[];
  /** Display devices bound to vfio-pci that cannot be passed through, and why. */
  skipped: Array<{ bdf: string; reason: string }>;
}

/**
 * The GPUs this host can pass through: display-class PCI functions bound to vfio-pci, one per
 * IOMMU group. A group is handed to a VM whole (a GPU and its audio function share one), and only
 * if every function in it is bound to vfio-pci: otherwise the kernel refuses the group (not
 * "viable"). `sysfsRoot` is `/sys` on a host; tests point it at a fake tree.
 */
export async function discoverGpus(sysfsRoot: string, log: Logger): Promise<GpuDiscovery> {
  const drivers = path.join(sysfsRoot, 'bus/pci/drivers/vfio-pci');
  const bound = (await fs.readdir(drivers).catch(() => [] as string[])).filter((e) => BDF.test(e)).sort();
  const gpus: Gpu[] = [];
  const skipped: GpuDiscovery['skipped'] = [];
  const seen = new Set<string>();
  for (const bdf of bound) {
    const dev = path.join(sysfsRoot, 'bus/pci/devices', bdf);
    if (!DISPLAY_CLASS.test(await readTrim(path.join(dev, 'class')))) continue;
    const group = await fs.readlink(path.join(dev, 'iommu_group')).then(
      (l) => path.basename(l),
      () => undefined,
    );
    if (!group || !/^\d+$/.test(group)) {
      skipped.push({ bdf, reason: 'no IOMMU group (is the IOMMU on? intel_iommu=on / amd_iommu=on)' });
      continue;
    }
    if (seen.has(group)) continue;
    seen.add(group);
    const members = (await fs.readdir(path.join(sysfsRoot, 'kernel/iommu_groups', group, 'devices')).catch(() => [bdf]))
      .filter((e) => BDF.test(e))
      .sort();
    const functions: string[] = [];
    let unbound: string | undefined;
    for (const m of members) {
      const mdev = path.join(sysfsRoot, 'bus/pci/devices', m);
      if (BRIDGE_CLASS.test(await readTrim(path.join(mdev, 'class')))) continue;
      const driver = await fs.readlink(path.join(mdev, 'driver')).then(
        (l) => path.basename(l),
        () => 'none',
      );
      if (driver !== 'vfio-pci') unbound ??= `${m} (driver ${driver})`;
      functions.push(m);
    }
    if (unbound) {
      skipped.push({ bdf, reason: `IOMMU group ${group} also holds ${unbound}, not bound to vfio-pci` });
      continue;
    }
    gpus.push({ group, functions, vendor: await readTrim(path.join(dev, 'vendor')), device: await readTrim(path.join(dev, 'device')) });
  }
  for (const s of skipped) log.warn(s, 'GPU bound to vfio-pci but not usable');
  if (gpus.length > 0) log.info({ gpus: gpus.map((g) => `${g.functions.join('+')} (group ${g.group})`) }, 'GPUs for passthrough');
  return { gpus, skipped };
}

const readTrim = (file: string): Promise<string> =>
  fs.readFile(file, 'utf8').then(
    (s) => s.trim(),
    () => '',
  );
