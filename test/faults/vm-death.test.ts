import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { pollUntil } from '@forky/base';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import type { VmInfo } from '@forky/contract';
import { isRunning, qemuPidsWhere } from '../helpers/procs.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, answersHostInfo, hostdEnv, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'death-h1';
const POOL = { size: 1, maxSnapshots: 4 };

/** Kills one QEMU process as a crash would, and waits until it is gone. */
async function killQemu(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL');
  await pollUntil(async () => ((await isRunning(pid)) ? undefined : true), { timeoutMs: 10_000, intervalMs: 10, what: `QEMU ${pid} gone` });
}

/** What a failed VM says about its failure (an optional field of VmInfo). */
const failureOf = (v: VmInfo): { at?: string; reason?: string } | undefined =>
  (v as { failure?: { at?: string; reason?: string } }).failure;

describe('VMs whose QEMU dies are failed, with hostd up or down', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let client: HostdClient;
  let dir: string;
  let hostd: ServiceProc | undefined;
  const dataDir = (): string => path.join(dir, 'data');
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));
  const vmDir = (id: string): string => path.join(dataDir(), 'vms', id);
  const qemuIn = (): Promise<number[]> => qemuPidsWhere((cmd) => cmd.includes(dir));

  const startHostd = async (): Promise<void> => {
    hostd = await spawnService(
      HOSTD_MAIN,
      hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: dataDir(), ramDir: ramDir() }),
      path.join(dir, 'hostd.log'),
      answersHostInfo(client),
    );
  };
  const killHostd = async (): Promise<void> => {
    await hostd?.kill();
    hostd = undefined;
  };
  const show = (id: string): Promise<VmInfo | undefined> => client.call('vm.list', {}).then((l) => l.vms.find((v) => v.id === id));
  /** The VM's files a failed VM must not keep: its own RAM file, its sockets. */
  const leftovers = async (v: VmInfo): Promise<string[]> => {
    const socks = (await fs.readdir(vmDir(v.id)).catch(() => [] as string[])).filter((f) => f.endsWith('.sock'));
    const ram = path.join(ramDir(), 'vms', `${v.id}.ram`);
    return [
      ...socks,
      ...((await fs.access(ram).then(
        () => true,
        () => false,
      ))
        ? [ram]
        : []),
    ];
  };
  /** Destroys a failed VM and checks that nothing of it is left. */
  const destroyFailed = async (id: string): Promise<void> => {
    const gone = await client.call('vm.destroy', { id });
    assert.equal(gone.state, 'destroyed');
    assert.equal(await show(id), undefined, `${id} is no longer listed`);
    await assert.rejects(fs.access(vmDir(id)), `${id}'s directory is removed`);
  };

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-death-'));
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    client = new HostdClient(nc, HOST, { timeoutMs: 120_000 });
    await startHostd();
  });
  after(async () => {
    if (hostd) await killHostd().catch(() => undefined);
    for (const pid of await qemuIn()) process.kill(pid, 'SIGKILL');
    await nc?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  let diedUp: VmInfo;
  it('a VM whose QEMU dies with hostd up is failed, shows no pid, says why, and keeps none of its runtime files', async () => {
    const vm = await client.call('vm.boot', {});
    assert.ok(vm.pid);
    await killQemu(vm.pid);
    diedUp = await pollUntil(
      async () => {
        const v = await show(vm.id);
        return v?.state === 'failed' && (await leftovers(v)).length === 0 ? v : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 10, what: 'VM failed and cleaned' },
    ).catch(async () => (await show(vm.id)) as VmInfo);
    assert.equal(diedUp.state, 'failed');
    assert.equal(diedUp.pid, undefined, 'a failed VM shows no pid');
    assert.match(failureOf(diedUp)?.reason ?? '', /QEMU/);
    assert.ok(Date.parse(failureOf(diedUp)?.at ?? '') > Date.parse(vm.createdAt));
    assert.deepEqual(await leftovers(diedUp), [], 'its RAM file and sockets are removed');
    await fs.access(path.join(vmDir(vm.id), 'qemu.log'));
  });

  it('a VM whose QEMU died while hostd was down is failed after the restart, like one that died with hostd up; destroy cleans it up', async (t) => {
    const vm = await client.call('vm.boot', {});
    assert.ok(vm.pid);
    await killHostd();
    await killQemu(vm.pid);
    await startHostd();

    const listed = await show(vm.id);
    assert.ok(listed, 'the VM is still listed after the restart');
    assert.equal(listed.state, 'failed');
    assert.equal(listed.pid, undefined);
    assert.match(failureOf(listed)?.reason ?? '', /hostd was down/);
    assert.deepEqual(await leftovers(listed), []);
    const earlier = await show(diedUp.id);
    assert.equal(earlier?.state, 'failed', 'a VM failed before the restart stays failed');
    assert.deepEqual(failureOf(earlier as VmInfo), failureOf(diedUp));
    t.diagnostic(`after the restart: ${vm.id} ${listed.state} (${failureOf(listed)?.reason}), ${diedUp.id} ${earlier?.state}`);

    await destroyFailed(vm.id);
    await destroyFailed(diedUp.id);
    assert.deepEqual(await qemuIn(), [], 'no QEMU of this host is left');
    assert.deepEqual(await fs.readdir(path.join(dataDir(), 'vms')), [], 'no VM directory is left');
    assert.deepEqual(await fs.readdir(path.join(ramDir(), 'vms')).catch(() => []), [], 'no VM RAM file is left');
  });
});

describe('a warm-pool process that dies', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    // In this process: the pool's own count says when a process waits (its QEMU shows up earlier).
    host = await startTestHost(nats.url, { overrides: { pool: POOL } });
  });
  after(async () => {
    await host?.stop();
    await nats?.stop();
  });
  /** The pool's processes of `snap`, once it holds one: QEMU processes of this host that no VM has. */
  const pooled = async (snap: string): Promise<number[]> => {
    await pollUntil(async () => (host.hostd.engine.warmCount(snap) === 1 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'warm pool filled',
    });
    const vms = new Set((await host.client.call('vm.list', {})).vms.map((v) => v.pid));
    return (await qemuPidsWhere((cmd) => cmd.includes(host.dataDir))).filter((p) => !vms.has(p));
  };

  it('a warm-pool process that dies is replaced, and the next fork succeeds at the first try', async (t) => {
    const parent = await host.client.call('vm.boot', {});
    const first = await host.client.call('fork', { source: parent.id, count: 1, resumeParent: true });
    const snap = first.snapshot.id;
    const [warm] = await pooled(snap);
    await killQemu(warm as number);

    const t0 = performance.now();
    const afterKill = await host.client.call('fork', { source: snap, count: 1 });
    const afterKillMs = Math.round(performance.now() - t0);
    assert.equal(afterKill.children.length, 1);
    const child = afterKill.children[0] as VmInfo;
    assert.notEqual(child.pid, warm, 'the dead process was not handed out');
    assert.equal((await host.client.call('vm.exec', { id: child.id, cmd: ['hostname'] })).stdout.trim(), child.id);

    // The pool refills with a live process, and a fork takes it.
    const [refilled] = await pooled(snap);
    assert.notEqual(refilled, warm);
    const t1 = performance.now();
    const fromPool = await host.client.call('fork', { source: snap, count: 1 });
    const fromPoolMs = Math.round(performance.now() - t1);
    assert.equal(fromPool.children[0]?.timings?.warm, 1, 'the refilled pool served the fork');
    assert.equal(fromPool.children[0]?.pid, refilled);
    t.diagnostic(
      `fork right after its warm process was killed: ${afterKillMs} ms (from the pool: ${afterKill.children[0]?.timings?.warm === 1}); fork from the refilled pool: ${fromPoolMs} ms (child ready ${fromPool.children[0]?.timings?.readyMs} ms)`,
    );
    for (const v of [parent, child, first.children[0] as VmInfo, fromPool.children[0] as VmInfo])
      await host.client.call('vm.destroy', { id: v.id });
    await host.client.call('snapshot.delete', { id: snap });
  });
});
