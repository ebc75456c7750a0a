import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CapacityError, createLogger } from '@forky/base';
import { GpuAllocator, buildArgs, discoverGpus, type VmSpec } from '@forky/hostd/internal';
import { TWO_GPUS, writeFakeSysfs } from '../helpers/fake-sysfs.js';

const log = createLogger({ level: 'silent', name: 'test' });

describe('GPU discovery from sysfs', () => {
  let root: string;
  before(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-sysfs-'));
    await writeFakeSysfs(root, [
      ...TWO_GPUS,
      // A GPU whose group also holds a function the host driver keeps: the kernel refuses the group.
      { bdf: '0000:03:00.0', cls: '0x030000', driver: 'vfio-pci', group: '14' },
      { bdf: '0000:03:00.1', cls: '0x040300', driver: 'snd_hda_intel', group: '14' },
      // A bridge in a GPU's group does not count against it, and is not passed through.
      { bdf: '0000:04:00.0', cls: '0x030000', driver: 'vfio-pci', group: '15' },
      { bdf: '0000:00:1c.0', cls: '0x060400', driver: 'pcieport', group: '15' },
      // A NIC bound to vfio-pci is not a GPU; a GPU left with its host driver is not offered.
      { bdf: '0000:05:00.0', cls: '0x020000', driver: 'vfio-pci', group: '16' },
      { bdf: '0000:06:00.0', cls: '0x030000', driver: 'nvidia', group: '17' },
    ]);
  });
  after(() => fs.rm(root, { recursive: true, force: true }));

  it('finds viable GPUs with every function of their group, and says why others are skipped', async () => {
    const d = await discoverGpus(root, log);
    assert.deepEqual(
      d.gpus.map((g) => [g.group, g.functions]),
      [
        ['12', ['0000:01:00.0', '0000:01:00.1']],
        ['13', ['0000:02:00.0', '0000:02:00.1']],
        ['15', ['0000:04:00.0']],
      ],
    );
    assert.deepEqual(d.skipped, [
      { bdf: '0000:03:00.0', reason: 'IOMMU group 14 also holds 0000:03:00.1 (driver snd_hda_intel), not bound to vfio-pci' },
    ]);
  });

  it('finds none where vfio-pci is not loaded', async () => {
    assert.deepEqual(await discoverGpus(path.join(root, 'nothing-here'), log), { gpus: [], skipped: [] });
  });
});

describe('GPU allocation', () => {
  const gpus = [
    { group: '12', functions: ['0000:01:00.0'], vendor: '', device: '' },
    { group: '13', functions: ['0000:02:00.0'], vendor: '', device: '' },
  ];
  it('gives each VM its own, refuses one too many with CAPACITY on gpus, and takes them back', () => {
    const a = new GpuAllocator(gpus, 'h1');
    assert.equal(a.take('vm-a', 1)[0]?.group, '12');
    assert.equal(a.take('vm-b', 1)[0]?.group, '13');
    assert.equal(a.free, 0);
    assert.throws(
      () => a.take('vm-c', 1),
      (e: unknown) =>
        e instanceof CapacityError && e.details?.field === 'gpus' && /0 free GPU\(s\) of 2 \(held by vm-a, vm-b\)/.test(e.message),
    );
    a.release('vm-a');
    assert.equal(a.take('vm-c', 1)[0]?.group, '12');
    assert.deepEqual(a.take('vm-d', 0), []);
  });
  it('refuses two when one is free, giving none', () => {
    const a = new GpuAllocator(gpus, 'h1');
    a.adopt('vm-a', ['12', '99']);
    assert.throws(() => a.take('vm-b', 2), CapacityError);
    assert.equal(a.free, 1);
  });
});

describe('QEMU command line of a GPU VM', () => {
  it('passes every function through with vfio-pci, after the devices a snapshot names', () => {
    const spec: VmSpec = {
      id: 'vm-gpu',
      generation: 0,
      image: { kernel: '/k', initrd: '/i' } as VmSpec['image'],
      memMiB: 256,
      cpus: 1,
      kernelCmdline: 'console=ttyS0',
      ram: { file: '/dev/shm/x', shared: true },
      diskFile: '/d.qcow2',
      mac: '52:54:00:00:00:01',
      gpus: ['0000:01:00.0', '0000:01:00.1'],
      appDisks: [],
      runDir: '/run/x',
      net: { restrict: false },
    };
    const p = {
      qmpSocket: '/q',
      qmpServerSocket: '/s',
      qgaSocket: '/g',
      ctlSocket: '/c',
      agentSocket: '/a',
      forkSocket: '/f',
      serialLog: '/l',
    };
    const args = buildArgs(spec, { accel: 'kvm', machine: 'pc', cpuModel: 'host', sandbox: true, network: { mode: 'user' } }, p, 'boot');
    const devices = args.flatMap((a, i) => (args[i - 1] === '-device' ? [a] : []));
    assert.deepEqual(devices.slice(-2), ['vfio-pci,host=0000:01:00.0,id=gpu0', 'vfio-pci,host=0000:01:00.1,id=gpu1']);
    const none = buildArgs(
      { ...spec, gpus: [] },
      { accel: 'kvm', machine: 'pc', cpuModel: 'host', sandbox: true, network: { mode: 'user' } },
      p,
      'boot',
    );
    assert.equal(none.filter((a) => a.startsWith('vfio-pci')).length, 0);
  });
});
