import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pollUntil } from '@forky/base';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { Forky } from '@forky/sdk';
import type { VmInfo, VmListRequest } from '@forky/contract';
import { refused } from '../helpers/errors.js';
import { guestShell } from '../helpers/guest.js';
import { qemuPidsWhere } from '../helpers/procs.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { HOSTD_MAIN, hostdEnv, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'labels-h1';

/**
 * Names, labels and list filters (issue 20) on nats + one hostd (its own process, so it can be
 * stopped and started again on the same data directory) + a scheduler, real QEMU under TCG.
 */
describe('VM names, labels, per-child env and list filters', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let sched: TestScheduler;
  let hostd: ServiceProc | undefined;
  let dir: string;
  const dataDir = (): string => path.join(dir, 'data');
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));
  const call: TestScheduler['client']['call'] = (...a) => sched.client.call(...a);
  const sh = guestShell((id, cmd) => sched.client.call('vm.exec', { id, cmd }));
  const ids = async (f: VmListRequest): Promise<string[]> => (await call('vm.list', f)).vms.map((v) => v.id).sort();

  const startHostd = async (): Promise<void> => {
    const probe = new HostdClient(sched.nc, HOST, { timeoutMs: 1000 });
    hostd = await spawnService(
      HOSTD_MAIN,
      hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: dataDir(), ramDir: ramDir() }),
      path.join(dir, 'hostd.log'),
      () =>
        probe.call('host.info', {}).then(
          () => true,
          () => false,
        ),
    );
    // The scheduler places and lists from heartbeats: wait for this hostd's.
    await pollUntil(async () => ((await call('hosts', {})).hosts.some((h) => h.id === HOST && h.alive) ? true : undefined), {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: `${HOST} alive in the scheduler`,
    });
  };

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-labels-'));
    nats = await startNatsServer();
    sched = await startTestScheduler(nats.url);
    await startHostd();
  });

  after(async () => {
    const left = await call('vm.list', {}).catch(() => ({ vms: [] as VmInfo[] }));
    for (const v of left.vms) await call('vm.destroy', { id: v.id }).catch(() => undefined);
    await hostd?.kill('SIGTERM').catch(() => hostd?.kill());
    // Whatever this test left running is its own to stop.
    for (const pid of await qemuPidsWhere((cmd) => cmd.includes(dir))) process.kill(pid, 'SIGKILL');
    await sched?.stop();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  it('names are unique, children inherit labels and get their own labels and env, lists filter, and all of it survives a restart', async () => {
    const t0 = performance.now();
    // Through the SDK where it has the call: create, fork and list.
    const forky = Forky.fromConnection(sched.nc);
    const vmA = await forky.vms.create({ name: 'alpha', labels: { team: 'a', tier: 'web' } });
    const a = vmA.info;
    assert.equal(a.name, 'alpha');
    assert.deepEqual(a.labels, { team: 'a', tier: 'web' });

    // A taken name: CONFLICT naming the field, and nothing made.
    const dirsBefore = (await fs.readdir(path.join(dataDir(), 'vms'))).sort();
    const e = await refused(forky.vms.create({ name: 'alpha', labels: { other: 'x' } }));
    assert.equal(e.code, 'CONFLICT');
    assert.equal(e.details?.field, 'name');
    assert.deepEqual(await ids({}), [a.id]);
    assert.deepEqual((await fs.readdir(path.join(dataDir(), 'vms'))).sort(), dirsBefore);

    // Three children: the parent's labels, the fork's, then each one's own on top (child 2 overrides `tier`).
    const own: Array<Record<string, string>> = [{ i: '0' }, { i: '1' }, { i: '2', tier: 'batch' }];
    const { result: f } = await vmA.fork({
      live: true,
      labels: { run: 'r1' },
      perChild: own.map((labels, i) => ({ labels, env: { SEED: String(i * 7), WORD: `w ${i}=x` } })),
    });
    const kids = f.children.map((c) => c.id);
    assert.equal(kids.length, 3);
    assert.deepEqual(f.snapshot.labels, { team: 'a', tier: 'web' }, 'a snapshot carries the labels the VM had');
    for (const [i, c] of f.children.entries()) {
      assert.equal(c.name, undefined, 'children get no name');
      assert.deepEqual(c.labels, { team: 'a', tier: 'web', run: 'r1', ...own[i] });
      assert.equal(await sh(c.id, 'cat /run/forky/env'), `SEED=${i * 7}\nWORD=w ${i}=x\n`);
    }
    assert.equal(
      (await call('vm.exec', { id: a.id, cmd: ['/bin/sh', '-c', 'test -e /run/forky/env'] })).exitCode,
      1,
      'the parent has no env file',
    );

    await call('vm.pause', { id: kids[0] as string });
    const filters = async (): Promise<void> => {
      assert.deepEqual(await ids({ labels: { run: 'r1' } }), [...kids].sort());
      assert.deepEqual(await ids({ labels: { team: 'a' } }), [a.id, ...kids].sort());
      assert.deepEqual(await ids({ labels: { team: 'a', tier: 'web' } }), [a.id, kids[0], kids[1]].sort());
      assert.deepEqual(await ids({ labels: { i: '1' } }), [kids[1]]);
      assert.deepEqual(await ids({ labels: { i: '9' } }), []);
      assert.deepEqual(await ids({ state: ['paused'] }), [kids[0]]);
      assert.deepEqual(await ids({ state: ['running'], labels: { run: 'r1' } }), [kids[1], kids[2]].sort());
      assert.deepEqual(await ids({ parent: f.snapshot.id }), [...kids].sort());
      assert.deepEqual(await ids({ parent: f.snapshot.id, labels: { tier: 'batch' } }), [kids[2]]);
      assert.deepEqual(await ids({ image: 'tiny' }), [a.id, ...kids].sort());
      assert.deepEqual(await ids({ image: 'debian' }), []);
      const snaps = (await call('snapshot.list', { labels: { team: 'a' } })).snapshots.map((s) => s.id);
      assert.deepEqual(snaps, [f.snapshot.id]);
      assert.deepEqual((await call('snapshot.list', { labels: { run: 'r1' } })).snapshots, []);
      assert.deepEqual(
        (await call('snapshot.list', { vm: a.id })).snapshots.map((s) => s.id),
        [f.snapshot.id],
      );
    };
    await filters();
    const sdkList = await forky.vms.list({ labels: { run: 'r1' }, state: 'running' });
    assert.deepEqual(sdkList.map((v) => v.id).sort(), [kids[1], kids[2]].sort());
    assert.deepEqual(
      (await forky.snapshots.list({ labels: { tier: 'web' } })).map((x) => x.id),
      [f.snapshot.id],
    );
    // hostd filters its own list too.
    const direct = new HostdClient(sched.nc, HOST, { timeoutMs: 10_000 });
    assert.deepEqual(
      (await direct.call('vm.list', { labels: { i: '2' } })).vms.map((v) => v.id),
      [kids[2]],
    );
    const tBeforeRestart = performance.now();

    // Stopped and started on the same data directory: the VMs run on, with their names and labels.
    await hostd?.kill('SIGTERM');
    await startHostd();
    await pollUntil(async () => ((await ids({})).length === 4 ? true : undefined), {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: 'the VMs listed again',
    });
    assert.equal((await call('vm.show', { id: a.id })).name, 'alpha');
    assert.deepEqual((await call('vm.show', { id: kids[2] as string })).labels, { team: 'a', tier: 'batch', run: 'r1', i: '2' });
    await filters();
    assert.equal((await refused(call('vm.boot', { name: 'alpha' }))).code, 'CONFLICT', 'the name is still held after a restart');

    // Destroying the named VM gives its name back.
    await call('vm.destroy', { id: a.id });
    const b = await call('vm.boot', { name: 'alpha' });
    assert.equal(b.name, 'alpha');
    assert.equal(b.labels, undefined);
    assert.deepEqual(await ids({ labels: { team: 'a' } }), [...kids].sort());
    await call('vm.destroy', { id: b.id });
    process.stderr.write(
      `# labels: boot+conflict+fork 3+filters ${Math.round(tBeforeRestart - t0)} ms; restart and the rest ${Math.round(performance.now() - tBeforeRestart)} ms\n`,
    );
  });
});
