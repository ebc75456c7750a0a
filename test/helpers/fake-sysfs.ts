import fs from 'node:fs/promises';
import path from 'node:path';

/** One PCI function of a fake sysfs tree. */
export interface FakePciFunction {
  bdf: string;
  /** PCI class, as sysfs writes it (`0x030000` VGA, `0x040300` audio, `0x060400` bridge). */
  cls: string;
  driver: string;
  group: string;
  vendor?: string;
  device?: string;
}

/**
 * Writes the part of /sys that GPU discovery reads: the functions under bus/pci/devices (class,
 * vendor, device, `driver` and `iommu_group` links), the vfio-pci driver's links, and the IOMMU
 * groups' device lists. The links point where the kernel's do, relative, inside `root`.
 */
export async function writeFakeSysfs(root: string, fns: readonly FakePciFunction[]): Promise<void> {
  for (const f of fns) {
    const dev = path.join(root, 'bus/pci/devices', f.bdf);
    await fs.mkdir(dev, { recursive: true });
    await fs.writeFile(path.join(dev, 'class'), `${f.cls}\n`);
    await fs.writeFile(path.join(dev, 'vendor'), `${f.vendor ?? '0x10de'}\n`);
    await fs.writeFile(path.join(dev, 'device'), `${f.device ?? '0x2204'}\n`);
    const driverDir = path.join(root, 'bus/pci/drivers', f.driver);
    const groupDir = path.join(root, 'kernel/iommu_groups', f.group, 'devices');
    await fs.mkdir(driverDir, { recursive: true });
    await fs.mkdir(groupDir, { recursive: true });
    await fs.symlink(path.relative(dev, driverDir), path.join(dev, 'driver'));
    await fs.symlink(path.relative(dev, path.dirname(groupDir)), path.join(dev, 'iommu_group'));
    await fs.symlink(path.relative(driverDir, dev), path.join(driverDir, f.bdf));
    await fs.symlink(path.relative(groupDir, dev), path.join(groupDir, f.bdf));
  }
}

/** Two GPUs for passthrough, each with its HDMI audio function in its own IOMMU group. */
export const TWO_GPUS: readonly FakePciFunction[] = [
  { bdf: '0000:01:00.0', cls: '0x030000', driver: 'vfio-pci', group: '12' },
  { bdf: '0000:01:00.1', cls: '0x040300', driver: 'vfio-pci', group: '12', device: '0x1aef' },
  { bdf: '0000:02:00.0', cls: '0x030200', driver: 'vfio-pci', group: '13' },
  { bdf: '0000:02:00.1', cls: '0x040300', driver: 'vfio-pci', group: '13', device: '0x1aef' },
];
