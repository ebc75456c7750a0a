import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { pollUntil } from '@forky/base';
import { refused } from '../helpers/errors.js';
import { HostdClient, SchedulerClient, startNatsServer, type NatsServer } from '@forky/bus';
import { BUCKETS, STREAMS } from '@forky/contract';
import { ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, SCHEDULER_MAIN, hostdEnv, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const A = 'dl-a';
const B = 'dl-b';
const dec = new TextDecoder();

interface Entry {
  state: string;
  owner: string;
  retry?: boolean;
  error?: { code: string; message: string };
}

interface EndpointFigures {
  name: string;
  data: { requests: number; errors: number; totalMs: number; lastError: string };
}

/**
 * Work whose caller was told it failed is not done later. hostd is stopped (SIGSTOP) while a
 * request to it is queued; the caller is answered; hostd resumes and reads the request: it must
 * refuse it. Dry-run hosts (VMs as records) and real processes for hostd and the scheduler.
 */
describe('deadlines: no work after the caller was told it failed', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let dir: string;
  let requests: KV;
  const hostd = new Map<string, ServiceProc>();
  const clients = new Map<string, HostdClient>();
  const scheds: ServiceProc[] = [];
  let snapshotId: string;
  const ramDir = (id: string): string => path.join('/dev/shm', `${path.basename(dir)}-${id}`);
  const host = (id: string): HostdClient => clients.get(id) as HostdClient;

  const startHostd = async (id: string): Promise<void> => {
    const config = path.join(dir, `${id}.json`);
    // One beat a second: a stopped host is seen down after 3 s.
    await fs.writeFile(config, JSON.stringify({ dryRun: true, pool: { size: 0 }, heartbeatMs: 1000 }));
    const env = {
      ...hostdEnv({ hostId: id, natsUrl: nats.url, dataDir: path.join(dir, id), ramDir: ramDir(id) }),
      FORKY_HOSTD_CONFIG: config,
    };
    clients.set(id, new HostdClient(nc, id, { timeoutMs: 30_000 }));
    hostd.set(
      id,
      await spawnService(HOSTD_MAIN, env, path.join(dir, `${id}.log`), () =>
        host(id)
          .call('host.info', {}, { timeoutMs: 1000 })
          .then(
            () => true,
            () => false,
          ),
      ),
    );
  };
  /** One job at a time and one delivery each, so a test can queue a job behind another and see its last delivery. */
  const startScheduler = async (name: string): Promise<ServiceProc> => {
    const config = path.join(dir, `${name}.json`);
    await fs.writeFile(
      config,
      // A stopped host is given up after 3 pings of 1 s, not 3 of 5 s.
      JSON.stringify({
        jobAckWaitMs: 1000,
        leaseMs: 1000,
        jobMaxDeliver: 1,
        jobConcurrency: 1,
        hostProbeTimeoutMs: 1000,
        logLevel: 'info',
      }),
    );
    const probe = new SchedulerClient(nc, { timeoutMs: 1000 });
    const p = await spawnService(
      SCHEDULER_MAIN,
      { FORKY_NATS_URL: nats.url, FORKY_SCHEDULER_CONFIG: config },
      path.join(dir, `${name}.log`),
      () =>
        probe.call('hosts', {}).then(
          (r) => [A, B].every((id) => r.hosts.some((h) => h.id === id && h.alive)),
          () => false,
        ),
    );
    scheds.push(p);
    return p;
  };
  const vmIds = async (id: string): Promise<string[]> => (await host(id).call('vm.list', {})).vms.map((v) => v.id).sort();
  /** A hostd's own figures for its endpoints ($SRV.STATS): requests read, errors, and time spent on finished ones. */
  const figures = async (id: string): Promise<Map<string, EndpointFigures['data']>> => {
    const replies = await nc.requestMany('$SRV.STATS.forky-hostd', new Uint8Array(), { maxWait: 1000, maxMessages: 2 });
    for await (const m of replies) {
      const s = JSON.parse(dec.decode(m.data)) as { metadata: Record<string, string>; endpoints: EndpointFigures[] };
      if (s.metadata.host === id) return new Map(s.endpoints.map((e) => [e.name, e.data]));
    }
    throw new Error(`no stats from ${id}`);
  };
  /**
   * Waits (bounded) until `id` has finished one more request on each endpoint than in `before`:
   * the queued request was read and its handler (if any) has ended, so what it made is there.
   */
  const settled = async (
    id: string,
    before: Map<string, EndpointFigures['data']>,
    endpoints: string[],
  ): Promise<Map<string, EndpointFigures['data']>> =>
    pollUntil(
      async () => {
        const now = await figures(id);
        return endpoints.every(
          (e) => (now.get(e)?.requests ?? 0) > (before.get(e)?.requests ?? 0) && (now.get(e)?.totalMs ?? 0) > (before.get(e)?.totalMs ?? 0),
        )
          ? now
          : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 50, what: `${id} finished the requests queued while it was stopped` },
    );
  const entry = async (key: string): Promise<Entry | undefined> => {
    const e = await requests.get(key);
    return e?.operation === 'PUT' ? e.json<Entry>() : undefined;
  };
  const finished = (key: string, timeoutMs: number): Promise<Entry> =>
    pollUntil(
      async () => {
        const e = await entry(key);
        return e && (e.state === 'done' || (e.state === 'failed' && !e.retry)) ? e : undefined;
      },
      { timeoutMs, intervalMs: 50, what: `request ${key} recorded as finished` },
    );
  /** Stops a host, once the scheduler sees it alive (an earlier test may have just continued it). */
  const stop = async (id: string): Promise<void> => {
    const probe = new SchedulerClient(nc, { timeoutMs: 1000 });
    await pollUntil(
      async () =>
        (await probe.call('hosts', {}).catch(() => ({ hosts: [] }))).hosts.some((h) => h.id === id && h.alive) ? true : undefined,
      { timeoutMs: 10_000, intervalMs: 50, what: `${id} seen alive` },
    );
    hostd.get(id)?.child.kill('SIGSTOP');
  };
  const cont = (id: string): void => void hostd.get(id)?.child.kill('SIGCONT');

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-deadlines-'));
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    await startHostd(A);
    await startHostd(B);
    const vm = await host(A).call('vm.boot', {});
    snapshotId = (await host(A).call('snapshot.create', { vm: vm.id, resume: true })).id;
    await startScheduler('sched-1');
    requests = await new Kvm(nc).open(BUCKETS.requests);
  });
  after(async () => {
    // A test that failed while a host was stopped left it so: continue it, then stop it.
    for (const p of hostd.values()) p.child.kill('SIGCONT');
    for (const s of scheds) await s.kill().catch(() => undefined);
    for (const p of hostd.values()) await p.kill().catch(() => undefined);
    await nc?.close();
    await nats?.stop();
    for (const id of [A, B]) await fs.rm(ramDir(id), { recursive: true, force: true });
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a keyless fork and boot sent to a stopped hostd: UNAVAILABLE, and after SIGCONT no VM is made', async (t) => {
    const sched = new SchedulerClient(nc, { timeoutMs: 60_000 });
    const vmsBefore = await vmIds(A);
    const figuresBefore = await figures(A);
    await stop(A);
    const sentAt = Date.now();
    try {
      const [fork, boot] = await Promise.all([
        refused(sched.call('fork', { source: snapshotId, count: 2 })),
        refused(sched.call('vm.boot', { host: A })),
      ]);
      const answeredMs = Date.now() - sentAt;
      assert.equal(fork.code, 'UNAVAILABLE', fork.message);
      assert.equal(boot.code, 'UNAVAILABLE', boot.message);
      t.diagnostic(`answered ${answeredMs} ms after sending: fork ${fork.code} (${fork.message}); boot ${boot.code}`);
    } finally {
      cont(A);
    }
    const after = await settled(A, figuresBefore, ['fork', 'vm_boot']);
    assert.deepEqual(await vmIds(A), vmsBefore, 'no VM was made after the caller was told UNAVAILABLE');
    assert.match(after.get('fork')?.lastError ?? '', /^TIMEOUT: /, 'hostd refused the fork it read late');
    assert.match(after.get('vm_boot')?.lastError ?? '', /^TIMEOUT: /);
    t.diagnostic(`hostd on SIGCONT: fork ${after.get('fork')?.lastError}; boot ${after.get('vm_boot')?.lastError}`);
  });

  it("a keyed job still queued at its caller's deadline is failed on the record, not run", async (t) => {
    const vmsOnB = await vmIds(B);
    const figuresBefore = await figures(A);
    await stop(A);
    try {
      // The one job worker is held by a fork on the stopped host...
      const first = refused(
        new SchedulerClient(nc, { timeoutMs: 60_000 }).call('fork', { key: 'deadline-held', source: snapshotId, count: 2 }),
      );
      await pollUntil(async () => ((await entry('deadline-held'))?.state === 'pending' ? true : undefined), {
        timeoutMs: 10_000,
        intervalMs: 20,
        what: 'the first job under way',
      });
      // ...so a boot on the live host waits in the queue past its caller's 1.5 s.
      const late = await refused(new SchedulerClient(nc, { timeoutMs: 1_500 }).call('vm.boot', { key: 'deadline-late', host: B }));
      assert.equal(late.code, 'TIMEOUT');
      assert.equal((await first).code, 'UNAVAILABLE');
      const e = await finished('deadline-late', 20_000);
      assert.equal(e.state, 'failed', 'the job is failed on the record');
      assert.equal(e.error?.code, 'TIMEOUT', JSON.stringify(e.error));
      assert.match(e.error?.message ?? '', /gave up at/);
      assert.deepEqual(await vmIds(B), vmsOnB, 'the boot was not run');
      t.diagnostic(`recorded: ${e.error?.code}: ${e.error?.message}`);
    } finally {
      cont(A);
    }
    await settled(A, figuresBefore, ['fork']);
    const jsm = await jetstreamManager(nc);
    assert.equal((await jsm.streams.info(STREAMS.jobs)).state.messages, 0, 'no job left in the queue');
  });

  it('a keyed job past its last delivery (its scheduler killed mid-run) is failed on the record, not run', async (t) => {
    const vmsOnA = await vmIds(A);
    const figuresBefore = await figures(A);
    const killed = scheds.at(-1) as ServiceProc;
    await stop(A);
    try {
      void new SchedulerClient(nc, { timeoutMs: 20_000 })
        .call('fork', { key: 'deadline-orphan', source: snapshotId, count: 2 })
        .catch(() => undefined);
      await pollUntil(async () => ((await entry('deadline-orphan'))?.state === 'pending' ? true : undefined), {
        timeoutMs: 10_000,
        intervalMs: 20,
        what: 'the job under way',
      });
      // Its one allowed delivery dies with its scheduler, the host call to A still queued.
      await killed.kill();
      const killedAt = Date.now();
      await startScheduler('sched-2');
      const e = await finished('deadline-orphan', 30_000);
      assert.equal(e.state, 'failed');
      assert.equal(e.error?.code, 'UNAVAILABLE', JSON.stringify(e.error));
      assert.match(e.error?.message ?? '', /deliver/);
      const jsm = await jetstreamManager(nc);
      assert.equal((await jsm.streams.info(STREAMS.jobs)).state.messages, 0, 'the job left the queue');
      t.diagnostic(`recorded ${Date.now() - killedAt} ms after the kill: ${e.error?.code}: ${e.error?.message}`);
    } finally {
      cont(A);
    }
    const after = await settled(A, figuresBefore, ['fork']);
    assert.deepEqual(await vmIds(A), vmsOnA, 'the fork the dead scheduler had sent was not run');
    assert.match(after.get('fork')?.lastError ?? '', /^TIMEOUT: /);
  });
});
