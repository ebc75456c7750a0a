import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { qemuPidsWhere } from '../helpers/procs.js';
import { IMAGES_DIR, ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, answersHostInfo, hostdEnv, logLines, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'rebuilt-h1';

/**
 * `tiny` in an images directory of the test's own (its parts linked, its manifest a copy), so
 * that the test can "rebuild" it: a new manifest with another id, renamed into place while hostd is down.
 */
async function ownTiny(imagesDir: string): Promise<string> {
  const dir = path.join(imagesDir, 'tiny');
  await fs.mkdir(dir, { recursive: true });
  for (const f of ['vmlinuz', 'initrd.img', 'disk.qcow2']) await fs.link(path.join(IMAGES_DIR, 'tiny', f), path.join(dir, f));
  await fs.copyFile(path.join(IMAGES_DIR, 'tiny', 'manifest.json'), path.join(dir, 'manifest.json'));
  return dir;
}

/** What a rebuild whose apt versions changed leaves: the name now means another id. Says the new id. */
async function rebuild(dir: string): Promise<string> {
  const m = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as { id: string };
  m.id = `sha256:${createHash('sha256').update(`${m.id} rebuilt`).digest('hex')}`;
  await fs.writeFile(path.join(dir, 'manifest.json.new'), JSON.stringify(m, null, 2));
  await fs.rename(path.join(dir, 'manifest.json.new'), path.join(dir, 'manifest.json'));
  return m.id;
}

const idOf = async (dir: string): Promise<string> =>
  (JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as { id: string }).id;

describe('a hostd restarted after the image its VMs were booted from was rebuilt', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let client: HostdClient;
  let dir: string;
  let tiny: string;
  let hostd: ServiceProc | undefined;
  const dataDir = (): string => path.join(dir, 'data');
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));
  const log = (): string => path.join(dir, 'hostd.log');
  const byId = (id: string): string => path.join(dataDir(), 'images', 'by-id', id.slice('sha256:'.length));

  const startHostd = async (): Promise<void> => {
    const env = {
      ...hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: dataDir(), ramDir: ramDir() }),
      FORKY_IMAGES_DIR: path.join(dir, 'images'),
    };
    hostd = await spawnService(HOSTD_MAIN, env, log(), answersHostInfo(client));
  };
  const killHostd = async (): Promise<void> => {
    await hostd?.kill();
    hostd = undefined;
  };
  const lastRecovery = async (): Promise<{ adopted?: string[]; failed?: string[] } | undefined> =>
    (await logLines(log(), 'recovered after a restart')).at(-1) as { adopted?: string[]; failed?: string[] } | undefined;

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-rebuilt-'));
    tiny = await ownTiny(path.join(dir, 'images'));
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    client = new HostdClient(nc, HOST, { timeoutMs: 120_000 });
    await startHostd();
  });
  after(async () => {
    if (hostd) await killHostd().catch(() => undefined);
    for (const pid of await qemuPidsWhere((cmd) => cmd.includes(dir))) process.kill(pid, 'SIGKILL');
    await nc?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  it('re-adopts its VMs; their older snapshots still fork and the VMs still snapshot', async (t) => {
    const bootId = await idOf(tiny);
    const vm = await client.call('vm.boot', {});
    await client.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', 'echo before-rebuild > /run/mark'] });
    const older = await client.call('snapshot.create', { vm: vm.id, resume: true });
    const pid = (await client.call('vm.show', { id: vm.id })).pid;
    assert.ok(await fs.stat(path.join(byId(bootId), 'manifest.json')), 'booting kept the image by id');
    // As an older hostd left it, with no copy by id: a restart keeps one while the name still means it.
    await killHostd();
    await fs.rm(byId(bootId), { recursive: true, force: true });
    await startHostd();
    assert.ok(await fs.stat(path.join(byId(bootId), 'manifest.json')), 'kept by id on recovery');
    await killHostd();
    const rebuiltId = await rebuild(tiny);

    await startHostd();
    const shown = await client.call('vm.show', { id: vm.id });
    assert.deepEqual([shown.state, shown.pid], ['running', pid], 'the same QEMU runs on');
    assert.equal((await client.call('vm.exec', { id: vm.id, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'before-rebuild');
    const report = await lastRecovery();
    assert.ok(report?.adopted?.includes(vm.id), `adopted: ${JSON.stringify(report)}`);
    assert.deepEqual(report?.failed ?? [], []);
    // The snapshot from before the rebuild forks from the bytes it was made from, kept by id.
    const fork = await client.call('fork', { source: older.id, count: 1 });
    const child = fork.children[0]?.id as string;
    assert.equal((await client.call('vm.exec', { id: child, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'before-rebuild');
    const newer = await client.call('snapshot.create', { vm: vm.id, resume: true });
    assert.equal(newer.profile.imageId, bootId, 'a snapshot names the bytes the VM runs on, not what the name means now');
    assert.notEqual(bootId, rebuiltId);

    // A VM booted by a hostd that kept no copy by id: re-attached with the named image all the same.
    const successor = (await client.call('vm.show', { id: vm.id })).pid; // a snapshot hands the VM to a new process
    await killHostd();
    await fs.rm(byId(bootId), { recursive: true, force: true });
    await rebuild(tiny);
    await startHostd();
    const again = await client.call('vm.show', { id: vm.id });
    assert.deepEqual([again.state, again.pid], ['running', successor], 'not killed for an image id it cannot find');
    assert.equal((await client.call('vm.show', { id: child })).state, 'running');
    assert.deepEqual((await lastRecovery())?.failed ?? [], []);
    // Its bytes are gone from this host: a snapshot of it is refused, typed, and the VM runs on.
    await assert.rejects(client.call('snapshot.create', { vm: vm.id, resume: true }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'NOT_FOUND', String(e));
      return true;
    });
    assert.equal((await client.call('vm.exec', { id: vm.id, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'before-rebuild');
    t.diagnostic(`VM ${vm.id} (pid ${pid}) adopted across two rebuilds of tiny; snapshot ${older.id} of the old id forked after the first`);
  });
});
