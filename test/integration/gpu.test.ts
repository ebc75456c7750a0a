import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pollUntil } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import type { VmInfo } from '@forky/contract';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { TWO_GPUS, writeFakeSysfs } from '../helpers/fake-sysfs.js';
import { refused } from '../helpers/errors.js';

/**
 * GPU passthrough on simulated hosts: hostd discovers GPUs from a fake sysfs tree and runs its
 * VMs as records (dry run: QEMU cannot open a fake VFIO device), writing the QEMU command line
 * each would have had. Placement, hostd's own refusal and the fork rule are the real code.
 */
describe('GPU passthrough: placement, refusal and the fork rule on a fake two-GPU host', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  let sysfs: string;
  const hosts: TestHost[] = [];
  let sched: TestScheduler;
  const booted: VmInfo[] = [];

  before(async () => {
    await ensureImageOnce();
    sysfs = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-sysfs-'));
    await writeFakeSysfs(path.join(sysfs, 'gpu'), TWO_GPUS);
    nats = await startNatsServer();
    const dry = { dryRun: true, pool: { size: 0 } };
    // gpu-b has no GPU but far more memory "free" than it will need: it must not get GPU VMs.
    hosts.push(await startTestHost(nats.url, { hostId: 'gpu-a', overrides: { ...dry, gpu: { sysfsRoot: path.join(sysfs, 'gpu') } } }));
    hosts.push(await startTestHost(nats.url, { hostId: 'gpu-b', overrides: { ...dry, gpu: { sysfsRoot: path.join(sysfs, 'empty') } } }));
    sched = await startTestScheduler(nats.url);
  });

  after(async () => {
    await sched?.stop();
    for (const h of hosts) await h.stop();
    await nats?.stop();
    await fs.rm(sysfs, { recursive: true, force: true });
  });

  const gpusOf = async (id: string): Promise<{ total: number; free: number } | undefined> =>
    (await sched.client.call('hosts', {})).hosts.find((h) => h.id === id)?.gpus;

  it("reports each host's GPUs in its capacity", async () => {
    await pollUntil(async () => ((await gpusOf('gpu-b')) ? true : undefined), { timeoutMs: 10_000, what: 'both hosts reporting' });
    assert.deepEqual(await gpusOf('gpu-a'), { total: 2, free: 2 });
    assert.deepEqual(await gpusOf('gpu-b'), { total: 0, free: 0 });
  });

  it('places two --gpus 1 VMs on the GPU host, each with its own GPU on its QEMU command line', async (t) => {
    for (let i = 0; i < 2; i++) booted.push(await sched.client.call('vm.boot', { gpus: 1, key: `gpu-boot-${i}` }));
    assert.deepEqual(
      booted.map((v) => v.host),
      ['gpu-a', 'gpu-a'],
    );
    assert.deepEqual(
      booted.map((v) => v.gpus),
      [
        ['0000:01:00.0', '0000:01:00.1'],
        ['0000:02:00.0', '0000:02:00.1'],
      ],
    );
    for (const v of booted) {
      const args = JSON.parse(await fs.readFile(path.join(hosts[0]?.dataDir as string, 'vms', v.id, 'qemu-args.json'), 'utf8')) as string[];
      const vfio = args.flatMap((a, i) => (args[i - 1] === '-device' && a.startsWith('vfio-pci,') ? [a] : []));
      assert.deepEqual(
        vfio,
        (v.gpus ?? []).map((bdf, i) => `vfio-pci,host=${bdf},id=gpu${i}`),
      );
    }
    t.diagnostic(`placed ${booted.map((v) => `${v.id} on ${v.host} with ${v.gpus?.join('+')}`).join('; ')}`);
  });

  it('refuses the third with a clear CAPACITY error on gpus, through the scheduler and at the host', async (t) => {
    const vmsBefore = (await sched.client.call('vm.list', {})).vms.length;
    const viaScheduler = await refused(sched.client.call('vm.boot', { gpus: 1, key: 'gpu-boot-2' }));
    assert.equal(viaScheduler.code, 'CAPACITY');
    assert.equal(viaScheduler.details?.field, 'gpus');
    assert.match(viaScheduler.message, /free GPU/);
    // hostd settles it too: a boot sent straight to the host (as one placed on a stale beat would be) is refused.
    const atHost = await refused((hosts[0] as TestHost).client.call('vm.boot', { gpus: 1 }));
    assert.equal(atHost.code, 'CAPACITY');
    assert.match(atHost.message, /host gpu-a has 0 free GPU\(s\) of 2 \(held by vm-/);
    assert.equal((await sched.client.call('vm.list', {})).vms.length, vmsBefore, 'nothing was made');
    // A VM without GPUs still boots (on either host).
    booted.push(await sched.client.call('vm.boot', { key: 'gpu-boot-plain' }));
    t.diagnostic(`third --gpus 1 refused: ${viaScheduler.code} (${viaScheduler.message}); at the host: ${atHost.message}`);
  });

  it('refuses to snapshot or fork a GPU VM (INCOMPATIBLE), and the VM runs on', async (t) => {
    const gpuVm = booted[0] as VmInfo;
    const snap = await refused(sched.client.call('snapshot.create', { vm: gpuVm.id, key: 'gpu-snap' }));
    assert.equal(snap.code, 'INCOMPATIBLE');
    assert.equal(snap.details?.field, 'vm');
    assert.match(snap.message, /cannot be snapshotted or forked/);
    const fork = await refused(sched.client.call('fork', { source: gpuVm.id, count: 2, key: 'gpu-fork' }));
    assert.equal(fork.code, 'INCOMPATIBLE');
    assert.equal(fork.details?.field, 'source');
    assert.equal((await sched.client.call('vm.show', { id: gpuVm.id })).state, 'running');
    const snaps = await sched.client.call('snapshot.list', {});
    assert.equal(snaps.snapshots.length, 0, 'no snapshot was made');
    t.diagnostic(`fork of ${gpuVm.id}: ${fork.code} (${fork.message})`);
  });

  it("gives a destroyed VM's GPU to the next --gpus 1 boot", async () => {
    await sched.client.call('vm.destroy', { id: (booted[0] as VmInfo).id });
    await pollUntil(async () => ((await gpusOf('gpu-a'))?.free === 1 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'the GPU free again',
    });
    const next = await sched.client.call('vm.boot', { gpus: 1, key: 'gpu-boot-3' });
    assert.deepEqual(next.gpus, ['0000:01:00.0', '0000:01:00.1']);
  });
});
