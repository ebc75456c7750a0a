import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import { delay } from '@forky/base';
import { SchedulerClient, openBuckets } from '@forky/bus';
import type { ForkResult, VmInfo } from '@forky/contract';
import { loadSchedulerConfig, startScheduler, type RunningScheduler } from '@forky/scheduler';
import { createTestNet, type TestNet } from '../helpers/netns.js';
import { testLogger } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce, IMAGES_DIR, REPO } from '../helpers/repo.js';

const HOSTD = path.join(REPO, 'services', 'hostd', 'dist', 'main.js');

/** Polls `check` until it is true or the deadline passes; for conditions with no event to wait on. */
async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    let ok = false;
    try {
      ok = await check();
    } catch (e) {
      if (e instanceof Error && /exited during start/.test(e.message)) throw e;
    }
    if (ok) return;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await delay(200);
  }
}

describe('three hosts in their own network namespaces, on a 3-node NATS cluster with R3 buckets', { timeout: 600_000 }, () => {
  let net: TestNet;
  let dir: string;
  const nats: ChildProcess[] = [];
  const hostds: ChildProcess[] = [];
  let sched: RunningScheduler;
  let nc: NatsConnection;
  let client: SchedulerClient;
  let urls: string[];
  let first: ForkResult;
  const marker = randomBytes(6).toString('hex');

  const sh = guestShell((id, cmd) => client.call('vm.exec', { id, cmd }));

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fknet-'));
    net = await createTestNet(3);
    urls = net.hosts.map((h) => `nats://${h.addr}:4222`);
    const routes = net.hosts.map((h) => `nats://${h.addr}:6222`).join(',');
    net.hosts.forEach((h, i) => {
      const args = [
        '-a',
        h.addr,
        '-p',
        '4222',
        '-js',
        '-sd',
        path.join(dir, `js${i + 1}`),
        '-n',
        `nats-${i + 1}`,
        '--cluster_name',
        'forky',
        '--cluster',
        `nats://${h.addr}:6222`,
        '--routes',
        routes,
      ];
      nats.push(net.spawnIn(h, 'nats-server', args, path.join(dir, `nats-${i + 1}.log`)));
    });
    for (let i = 1; i <= 3; i++) {
      const log = path.join(dir, `nats-${i}.log`);
      await until(`nats-${i} ready`, 20_000, async () => (await fs.readFile(log, 'utf8')).includes('Server is ready'));
    }
    nc = await connect({ servers: urls, maxReconnectAttempts: -1 });
    // R3 buckets can be made once the cluster has a JetStream leader.
    await until('JetStream cluster ready', 60_000, async () => {
      await openBuckets(nc, { replicas: 3 });
      return true;
    });
    for (const [i, h] of net.hosts.entries()) {
      const cfg = {
        hostId: `n${i + 1}`,
        nats: { servers: [`nats://${h.addr}:4222`] },
        dataDir: path.join(dir, `h${i + 1}`),
        ramDir: path.join('/dev/shm', `${path.basename(dir)}-h${i + 1}`),
        imagesDir: IMAGES_DIR,
        bucketReplicas: 3,
        qemu: { probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json') },
        logLevel: 'warn',
      };
      const file = path.join(dir, `hostd-${i + 1}.json`);
      await fs.writeFile(file, JSON.stringify(cfg));
      hostds.push(net.spawnIn(h, process.execPath, [HOSTD, '--config', file], path.join(dir, `hostd-${i + 1}.log`)));
    }
    sched = await startScheduler(loadSchedulerConfig({ nats: { servers: urls }, bucketReplicas: 3, logLevel: 'warn' }), testLogger());
    client = new SchedulerClient(nc, { timeoutMs: 300_000 });
    await until('three hosts report in', 90_000, async () => {
      // A hostd that exits during start fails the run at once, with its own words.
      for (const [i, p] of hostds.entries()) {
        if (p.exitCode !== null || p.signalCode !== null) {
          const log = await fs.readFile(path.join(dir, `hostd-${i + 1}.log`), 'utf8').catch(() => '');
          throw new Error(`hostd ${i + 1} exited during start: ${log.trim().split('\n').slice(-5).join(' | ')}`);
        }
      }
      return (await client.call('hosts', {})).hosts.filter((h) => h.alive).length === 3;
    });
  });

  after(async () => {
    // Destroy what live hosts hold; whatever is left (a killed host's QEMU) dies with its namespace.
    const vms = await client?.call('vm.list', {}).catch(() => ({ vms: [] as VmInfo[] }));
    for (const v of vms?.vms ?? []) if (v.state !== 'lost') await client.call('vm.destroy', { id: v.id }).catch(() => undefined);
    await sched?.stop().catch(() => undefined);
    await nc?.close().catch(() => undefined);
    for (const p of [...hostds, ...nats]) p.kill('SIGKILL');
    await net?.destroy();
    for (let i = 1; i <= 3; i++) await fs.rm(path.join('/dev/shm', `${path.basename(dir)}-h${i}`), { recursive: true, force: true });
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('has its KV buckets and object store replicated on 3 nodes', async () => {
    const jsm = await jetstreamManager(nc);
    for (const stream of ['KV_forky_hosts', 'KV_forky_locator', 'KV_forky_requests', 'OBJ_forky_parts']) {
      const info = await jsm.streams.info(stream);
      assert.equal(info.config.num_replicas, 3, `${stream} is R3`);
      assert.equal((info.cluster?.replicas?.length ?? 0) + 1, 3, `${stream} has a leader and 2 replicas`);
    }
    const hosts = (await client.call('hosts', {})).hosts;
    assert.deepEqual(
      hosts.map((h) => h.id),
      ['n1', 'n2', 'n3'],
    );
  });

  it('forks a VM of n1 into 6 children spread over the 3 hosts; each resumes it and is isolated', async () => {
    const parent = await client.call('vm.boot', { host: 'n1' });
    const [bootId] = (await sh(parent.id, `echo ${marker} > /run/marker; cat /proc/sys/kernel/random/boot_id`)).trim().split('\n');
    first = await client.call('fork', { source: parent.id, count: 6, spread: true });
    const per = new Map<string, number>();
    for (const c of first.children) per.set(c.host, (per.get(c.host) ?? 0) + 1);
    assert.deepEqual([...per.entries()].sort(), [
      ['n1', 2],
      ['n2', 2],
      ['n3', 2],
    ]);
    for (const c of first.children) {
      assert.deepEqual(
        (await sh(c.id, 'cat /proc/sys/kernel/random/boot_id /run/marker')).trim().split('\n'),
        [bootId, marker],
        `${c.id} on ${c.host}`,
      );
    }
    const [one, ...rest] = first.children as [VmInfo, ...VmInfo[]];
    await sh(one.id, 'echo mine > /data/only-here && sync');
    for (const o of rest) assert.equal((await sh(o.id, 'ls /data')).includes('only-here'), false);
    process.stderr.write(
      `# transfers over the network: ${JSON.stringify(first.transfers?.map((t) => ({ host: t.host, bytes: t.bytes, nominal: t.nominalBytes, ms: t.ms })))}\n`,
    );
  });

  it('a second fork of the same snapshot ships no part again', async () => {
    const again = await client.call('fork', { source: first.snapshot.id, count: 3, spread: true });
    assert.equal(again.children.length, 3);
    for (const t of again.transfers ?? []) assert.deepEqual({ moved: t.moved, bytes: t.bytes }, { moved: 0, bytes: 0 }, t.host);
  });

  it('kill -9 of a hostd during a fork: the host is marked down and its share placed elsewhere', async () => {
    const forking = client.call('fork', { source: first.snapshot.id, count: 6, spread: true });
    (hostds[2] as ChildProcess).kill('SIGKILL');
    const r = await forking;
    assert.equal(r.children.length, 6);
    assert.equal(r.children.filter((c) => c.host === 'n3').length, 0);
    await until('n3 marked down', 20_000, async () => (await client.call('hosts', {})).hosts.find((h) => h.id === 'n3')?.alive === false);
    const lost = (await client.call('vm.list', {})).vms.filter((v) => v.host === 'n3');
    assert.ok(lost.length > 0 && lost.every((v) => v.state === 'lost'), 'its VMs are shown as lost');
  });
});
