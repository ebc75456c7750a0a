import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { VmInfo } from '@forky/contract';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce, IMAGES_DIR } from '../helpers/repo.js';
import { qemuPidsOf } from '../helpers/procs.js';

const sha256 = async (file: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');
const lines = (s: string): string[] => s.trim().split('\n');

describe('one host forks a VM (real QEMU, real nats-server)', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let parent: VmInfo;
  let children: VmInfo[] = [];
  let baseDiskSum: string;
  const marker = randomBytes(8).toString('hex');
  let parentBootId: string;
  let counterBeforeFork: number;
  let uptimeBeforeFork: number;

  const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd }));

  before(async () => {
    await ensureImageOnce();
    baseDiskSum = await sha256(path.join(IMAGES_DIR, 'tiny', 'disk.qcow2'));
    nats = await startNatsServer();
    host = await startTestHost(nats.url);
  });

  after(async () => {
    await host?.stop();
    await nats?.stop();
  });

  it('boots a VM that answers its agent, with its disk at /data', async () => {
    parent = await host.client.call('vm.boot', { image: 'tiny', memMiB: 256 });
    assert.equal(parent.state, 'running');
    assert.equal(parent.host, host.hostId);
    const out = await sh(parent.id, 'grep " /data " /proc/mounts; hostname');
    assert.match(out, /\/dev\/vda \/data ext4/);
    assert.match(out, new RegExp(parent.id));
  });

  it('forks 4 children that resume the parent: same boot id, marker, counter continues', async () => {
    const out = await sh(
      parent.id,
      // The counter file is replaced by rename, so a snapshot never catches it half-written.
      `echo ${marker} > /run/marker; (i=0; while true; do i=$((i+1)); echo $i > /run/counter.new; mv /run/counter.new /run/counter; usleep 20000; done) >/dev/null 2>&1 &
       while [ ! -s /run/counter ] || [ "$(cat /run/counter)" -lt 5 ]; do usleep 10000; done
       cat /proc/sys/kernel/random/boot_id; cat /run/counter; cut -d' ' -f1 /proc/uptime`,
    );
    [parentBootId, counterBeforeFork, uptimeBeforeFork] = ((l) => [l[0] as string, Number(l[1]), Number(l[2])])(lines(out));
    assert.match(parentBootId, /^[0-9a-f-]{36}$/);
    assert.ok(counterBeforeFork >= 5);

    const fork = await host.client.call('fork', { source: parent.id, count: 4 });
    children = fork.children;
    assert.equal(children.length, 4);
    assert.equal(new Set(children.map((c) => c.id)).size, 4);
    assert.equal(fork.snapshot.vm, parent.id);
    assert.equal(host.hostd.engine.show(parent.id).state, 'paused', 'the parent stays paused');

    for (const c of children) {
      assert.equal(c.state, 'running');
      assert.equal(c.parentSnapshot, fork.snapshot.id);
      const [bootId, mark, c1, uptime, c2] = lines(
        await sh(
          c.id,
          'cat /proc/sys/kernel/random/boot_id /run/marker /run/counter; cut -d" " -f1 /proc/uptime; usleep 300000; cat /run/counter',
        ),
      );
      assert.equal(bootId, parentBootId, 'a child has the parent boot id: it resumed, it did not boot');
      assert.equal(mark, marker);
      assert.ok(Number(c1) >= counterBeforeFork, `child counter ${c1} continues from the parent's ${counterBeforeFork}`);
      assert.ok(Number(c2) > Number(c1), `child counter runs on (${c1} -> ${c2})`);
      assert.ok(Number(uptime) >= uptimeBeforeFork, `child uptime ${uptime} continues the parent's ${uptimeBeforeFork}`);
    }
  });

  it("keeps each child's disk writes to itself; the base image is untouched", async () => {
    const [first, ...siblings] = children as [VmInfo, ...VmInfo[]];
    await sh(first.id, `echo only-${first.id} > /data/mine && sync`);
    assert.equal((await sh(first.id, 'cat /data/mine')).trim(), `only-${first.id}`);
    for (const s of siblings)
      assert.equal((await sh(s.id, 'ls /data')).includes('mine'), false, `sibling ${s.id} sees no write of ${first.id}`);
    await host.client.call('vm.resume', { id: parent.id });
    assert.equal((await sh(parent.id, 'ls /data')).includes('mine'), false, 'the parent sees no write of a child');
    // The parent's own later writes do not reach the children either.
    await sh(parent.id, 'echo parent > /data/parent-later && sync');
    assert.equal((await sh(first.id, 'ls /data')).includes('parent-later'), false);
    assert.equal(await sha256(path.join(IMAGES_DIR, 'tiny', 'disk.qcow2')), baseDiskSum);
  });

  it('destroys everything: no QEMU process and no file of any VM remains', async () => {
    const ids = [parent.id, ...children.map((c) => c.id)];
    const pids = children.map((c) => c.pid);
    assert.ok(pids.every((p) => typeof p === 'number'));
    for (const id of ids) assert.equal((await host.client.call('vm.destroy', { id })).state, 'destroyed');
    for (const { id } of (await host.client.call('snapshot.list', {})).snapshots) await host.client.call('snapshot.delete', { id });

    assert.deepEqual(await qemuPidsOf(ids), [], 'no QEMU process of the test remains');
    assert.deepEqual((await host.client.call('vm.list', {})).vms, []);
    for (const dir of ['vms', 'layers', 'snapshots']) {
      assert.deepEqual(await fs.readdir(path.join(host.dataDir, dir)).catch(() => []), [], `${dir}/ is empty`);
    }
    for (const dir of ['vms', 'snapshots']) {
      assert.deepEqual(await fs.readdir(path.join(host.ramDir, dir)).catch(() => []), [], `RAM ${dir}/ is empty`);
    }
    assert.equal(await sha256(path.join(IMAGES_DIR, 'tiny', 'disk.qcow2')), baseDiskSum);
  });
});
