import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { pollUntil, withDeadline } from '@forky/base';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { subjects, type ForkResult, type VmEvent, type VmInfo } from '@forky/contract';
import { fileTree } from '../helpers/files.js';
import { qemuPidsWhere } from '../helpers/procs.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, answersHostInfo, hostdEnv, logLines, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'restart-h1';
/**
 * The second test's VM: long enough to outlive its boot, the kill, the restart and the checks after
 * it (8.3 s measured alone, up to 13.4 s on a loaded machine, boot included), not much more: the test
 * waits out the rest.
 */
const TTL_MS = 20_000;

/** QEMU processes whose sockets live in `dir`: every process of this host, whoever owns it. */
const qemuIn = (dir: string): Promise<number[]> => qemuPidsWhere((cmd) => cmd.includes(dir));

/** The recovery report a hostd logged at start, if it recovered anything. */
async function lastRecovery(log: string): Promise<Record<string, unknown> | undefined> {
  return (await logLines(log, 'recovered after a restart')).at(-1);
}

describe('hostd killed with SIGKILL and restarted re-adopts its VMs and cleans up', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let client: HostdClient;
  let dir: string;
  let hostd: ServiceProc | undefined;
  const dataDir = (): string => path.join(dir, 'data');
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));
  const log = (): string => path.join(dir, 'hostd.log');
  /**
   * For a request hostd is killed under: its deadline passes while the test goes on. Its lost reply
   * is awaited, so the deadline is short: hostd starts the work within it, the test then kills it.
   */
  const shortClient = (): HostdClient => new HostdClient(nc, HOST, { timeoutMs: 6_000 });

  const startHostd = async (): Promise<void> => {
    hostd = await spawnService(
      HOSTD_MAIN,
      hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: dataDir(), ramDir: ramDir() }),
      log(),
      answersHostInfo(client),
    );
  };
  const killHostd = async (): Promise<void> => {
    await hostd?.kill();
    hostd = undefined;
  };
  /** VM records on disk, with their state and the request that made them. */
  const records = async (): Promise<Array<{ id: string; state: string; requestKey?: string }>> => {
    const out = [];
    for (const id of await fs.readdir(path.join(dataDir(), 'vms')).catch(() => [] as string[])) {
      const r = await fs.readFile(path.join(dataDir(), 'vms', id, 'vm.json'), 'utf8').then(
        (t) => JSON.parse(t) as { id: string; state: string; requestKey?: string },
        () => undefined,
      );
      if (r) out.push(r);
    }
    return out;
  };

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-restart-'));
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    client = new HostdClient(nc, HOST, { timeoutMs: 120_000 });
    await startHostd();
  });
  after(async () => {
    if (hostd) await killHostd().catch(() => undefined);
    // Whatever this test left running is its own to stop.
    for (const pid of await qemuIn(dir)) process.kill(pid, 'SIGKILL');
    await nc?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  it('re-adopts running and paused VMs, rolls back a half-done fork, kills orphans, and runs each keyed fork once', async (t) => {
    const parent = await client.call('vm.boot', {});
    await client.call('vm.exec', { id: parent.id, cmd: ['/bin/sh', '-c', 'echo before-crash > /run/mark'] });
    const first = await client.call('fork', { source: parent.id, count: 2, resumeParent: true, key: 'restart-fork-1' });
    const [b, c] = first.children as [VmInfo, VmInfo];
    await client.call('vm.pause', { id: c.id });
    const live = new Map((await client.call('vm.list', {})).vms.map((v) => [v.id, v]));
    // The warm pool now holds a process for the snapshot: an orphan once hostd dies.
    await pollUntil(async () => ((await qemuIn(dir)).length > live.size ? true : undefined), {
      timeoutMs: 30_000,
      what: 'warm pool filled',
    });

    // A fork of 6 under a key, killed half-way: some children exist, the request never finished.
    const half = shortClient()
      .call('fork', { source: first.snapshot.id, count: 6, key: 'restart-fork-2' })
      .catch((e: unknown) => e);
    await pollUntil(async () => ((await records()).some((r) => r.requestKey === 'restart-fork-2') ? true : undefined), {
      timeoutMs: 60_000,
      intervalMs: 5,
      what: 'a child of the batch on disk',
    });
    await killHostd();
    const orphansBefore = (await qemuIn(dir)).length;

    await startHostd();
    const report = await lastRecovery(log());
    const after = new Map((await client.call('vm.list', {})).vms.map((v) => [v.id, v]));
    assert.deepEqual([...after.keys()].sort(), [...live.keys()].sort(), 'exactly the VMs that ran before: the half fork left none');
    for (const [id, v] of live) assert.equal(after.get(id)?.pid, v.pid, `${id} is the same QEMU process`);
    assert.equal(after.get(c.id)?.state, 'paused');
    assert.equal(after.get(b.id)?.state, 'running');
    // The adopted VMs answer, with their memory intact.
    const mark = await client.call('vm.exec', { id: parent.id, cmd: ['cat', '/run/mark'] });
    assert.equal(mark.stdout.trim(), 'before-crash');
    await client.call('vm.resume', { id: c.id });
    assert.equal((await client.call('vm.exec', { id: c.id, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'before-crash');
    // No process or file belongs to nothing (a new warm process may start after a fork only).
    assert.deepEqual(
      await qemuIn(dir),
      [...after.values()].map((v) => v.pid as number).sort((x, y) => x - y),
      'no orphan QEMU',
    );
    assert.deepEqual((await fs.readdir(path.join(dataDir(), 'vms'))).sort(), [...after.keys()].sort(), 'no stray VM directory');

    // Exactly once: the unfinished key runs now, once; a repeat (and one after another restart) gets the same children.
    const again = await client.call('fork', { source: first.snapshot.id, count: 6, key: 'restart-fork-2' });
    const repeat = await client.call('fork', { source: first.snapshot.id, count: 6, key: 'restart-fork-2' });
    assert.deepEqual(
      repeat.children.map((x) => x.id),
      again.children.map((x) => x.id),
    );
    await killHostd();
    await startHostd();
    const afterSecond: ForkResult = await client.call('fork', { source: first.snapshot.id, count: 6, key: 'restart-fork-2' });
    assert.deepEqual(
      afterSecond.children.map((x) => x.id),
      again.children.map((x) => x.id),
    );
    const firstAgain = await client.call('fork', { source: parent.id, count: 2, resumeParent: true, key: 'restart-fork-1' });
    assert.deepEqual(
      firstAgain.children.map((x) => x.id),
      first.children.map((x) => x.id),
    );
    assert.equal((await client.call('vm.list', {})).vms.length, live.size + 6, 'each child created exactly once');
    // Its reply never came (it times out in the background meanwhile).
    assert.ok((await half) instanceof Error, 'the killed fork did not answer');
    t.diagnostic(
      `killed hostd with a 6-child fork half done and ${orphansBefore} QEMU processes up; restart: ${JSON.stringify({ adopted: (report?.adopted as string[])?.length, removed: (report?.removed as string[])?.length, orphansKilled: report?.orphansKilled, strayFilesRemoved: report?.strayFilesRemoved })}; the keyed fork then made its 6 children once, across a second restart`,
    );
  });

  it('a hostd killed mid-snapshot comes back with the VM whole and the snapshot either complete or gone', async (t) => {
    // The VM carries a TTL through the kill: the restarted hostd destroys it at its deadline.
    const events = nc.subscribe(subjects.events);
    const t0 = Date.now();
    const vm = await client.call('vm.boot', { ttlMs: TTL_MS });
    await client.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', 'echo kept > /run/kept'] });
    const snap = shortClient()
      .call('snapshot.create', { vm: vm.id, resume: true })
      .catch((e: unknown) => e);
    await pollUntil(async () => ((await records()).some((r) => r.id === vm.id && r.state === 'snapshotting') ? true : undefined), {
      timeoutMs: 30_000,
      intervalMs: 2,
      what: 'snapshot under way',
    });
    await killHostd();
    await startHostd();
    const shown = await client.call('vm.show', { id: vm.id });
    assert.equal(shown.state, 'running');
    assert.equal((await client.call('vm.exec', { id: vm.id, cmd: ['cat', '/run/kept'] })).stdout.trim(), 'kept');
    const checked = Date.now() - t0;
    const snaps = (await client.call('snapshot.list', {})).snapshots.filter((s) => s.vm === vm.id);
    assert.ok(snaps.length <= 1);
    const outcome = await snap;
    const files = await fileTree(ramDir());
    assert.ok(
      files.every((f) => !f.includes('.tmp')),
      'no half-written RAM file',
    );
    // Its lifecycle survived the restart; `expired` then `destroyed` within 10 s of its deadline.
    const deadline = Date.parse(shown.lifecycle?.expiresAt ?? 'none');
    assert.equal(deadline, Date.parse(vm.lifecycle?.expiresAt ?? ''), 'the same deadline after the restart');
    const kinds: string[] = [];
    let expiredAt = NaN;
    await withDeadline(
      (async () => {
        for await (const m of events) {
          const e = JSON.parse(new TextDecoder().decode(m.data)) as VmEvent;
          if (e.vm === vm.id) kinds.push(e.kind);
          if (e.vm === vm.id && e.kind === 'expired') expiredAt = Date.now();
          if (e.vm === vm.id && e.kind === 'destroyed') return;
        }
      })(),
      Math.max(0, deadline + 10_000 - Date.now()),
      `VM ${vm.id} destroyed within 10 s of its TTL`,
    );
    events.unsubscribe();
    assert.deepEqual(kinds.slice(-2), ['expired', 'destroyed']);
    await assert.rejects(client.call('vm.show', { id: vm.id }), (e: { code?: string }) => e.code === 'NOT_FOUND');
    t.diagnostic(
      `killed during snapshot.create (${outcome instanceof Error ? 'no reply' : 'it had answered'}); after restart the VM runs with its memory; snapshots of it: ${snaps.length} (rolled ${snaps.length ? 'forward' : 'back'}); its checks done ${checked} ms after its boot, its TTL ${TTL_MS} ms, \`expired\` ${expiredAt - deadline} ms and \`destroyed\` ${Date.now() - deadline} ms after its deadline`,
    );
  });
});
