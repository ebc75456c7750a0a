import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { ForkyError, createLogger, pollUntil } from '@forky/base';
import { SchedulerClient, openBuckets, startNatsServer, startService, type NatsServer } from '@forky/bus';
import {
  hostdContract,
  subjects,
  type ForkRequest,
  type ForkResult,
  type Heartbeat,
  type HostdEndpoint,
  type SnapshotInfo,
  type TransferResult,
} from '@forky/contract';
import { loadSchedulerConfig, startScheduler, type RunningScheduler } from '@forky/scheduler';
import { refused } from '../helpers/errors.js';

/**
 * The scheduler's cross-host fork (services/scheduler/src/fork.ts) over fake hosts, no QEMU: a
 * publish of the source that fails fails the fork with its error; the targets' shares are not
 * placed elsewhere (home), and the children home made are destroyed.
 */
describe('a spread fork whose publish fails (real nats-server and scheduler, fake hosts)', { timeout: 60_000 }, () => {
  const log = createLogger({ level: (process.env.FORKY_TEST_LOG as 'debug' | undefined) ?? 'error', name: 'test' });
  const SNAP = 'snap-pubfail00001';
  const HOSTS = ['pf-a', 'pf-b', 'pf-c'];
  let nats: NatsServer;
  let sched: RunningScheduler;
  let nc: NatsConnection;
  let client: SchedulerClient;
  const services: Service[] = [];
  let beats: NodeJS.Timeout | undefined;
  /** Every call a host got: host, endpoint, and the fork's key and count. */
  const calls: Array<{ host: string; endpoint: string; key?: string; count?: number }> = [];
  /** Hosts whose fork fails now. */
  const failing = new Set<string>();
  /** Children destroyed, by id. */
  const destroyed: string[] = [];
  let made = 0;

  const beat = (id: string): Heartbeat => ({
    id,
    accel: 'tcg',
    accelReason: 'fake',
    qemuVersion: '7.2.0',
    cpus: 2,
    memTotalMiB: 8000,
    memFreeMiB: 4000,
    vms: 0,
    snapshots: 0,
    images: ['tiny'],
    memCommittedMiB: 0,
    childPssMiB: 0,
    ksmSavedMiB: 0,
    gpus: { total: 0, free: 0 },
    ts: Date.now(),
    intervalMs: 1_000,
    instance: `${id}-1`,
    vmList: [],
    snapshotIds: [SNAP],
  });
  const snapshot = (host: string): SnapshotInfo => ({
    id: SNAP,
    host,
    image: 'tiny',
    vm: 'vm-pubfail00001',
    profile: { accel: 'tcg', qemuVersion: '7.2.0', machine: 'pc', cpuModel: 'max', cpus: 1, memMiB: 256, imageId: 'x' },
    createdAt: new Date().toISOString(),
    sizes: { stateBytes: 1, ramBytes: 1, diskBytes: 1 },
  });
  const transfer = (host: string): TransferResult => ({ id: SNAP, host, parts: 1, moved: 0, bytes: 0, nominalBytes: 0, ms: 1 });

  async function fakeHost(host: string): Promise<Service> {
    const handlers: Partial<Record<HostdEndpoint, (req: unknown) => Promise<unknown>>> = {
      'snapshot.show': async () => snapshot(host),
      'snapshot.publish': async () => {
        throw new ForkyError('CAPACITY', 'object store full');
      },
      'vm.destroy': async (req) => {
        const id = (req as { id: string }).id;
        destroyed.push(id);
        return {
          id,
          host,
          state: 'destroyed' as const,
          image: 'tiny',
          memMiB: 256,
          cpus: 1,
          accel: 'tcg',
          createdAt: new Date().toISOString(),
        };
      },
      'snapshot.fetch': async () => transfer(host),
      fork: async (req) => {
        const r = req as ForkRequest;
        calls.push({ host, endpoint: 'fork', key: r.key, count: r.count });
        if (failing.has(host)) throw new ForkyError('UNAVAILABLE', `${host} fails its share`);
        // Each child carries the labels of its perChild entry: which entry reached which host.
        const children = Array.from({ length: r.count }, (_, i) => ({
          ...(r.perChild?.[i]?.labels ? { labels: r.perChild[i].labels } : {}),
          id: `vm-child${String(made++).padStart(7, '0')}`,
          host,
          state: 'running' as const,
          image: 'tiny',
          memMiB: 256,
          cpus: 1,
          accel: 'tcg' as const,
          parentSnapshot: SNAP,
          createdAt: new Date().toISOString(),
        }));
        return {
          snapshot: snapshot(host),
          children,
          timings: { snapshotMs: 0, totalMs: 1, childMs: children.map(() => 1) },
        } satisfies ForkResult;
      },
    };
    return startService(
      nc,
      { name: `fake-hostd-${host}`, version: '0.0.1', description: 'a fake host for fork tests' },
      Object.entries(handlers).map(([endpoint, handler]) => ({
        name: endpoint.replace('.', '_'),
        subject: subjects.host(host, endpoint as HostdEndpoint),
        request: hostdContract[endpoint as HostdEndpoint].request,
        reply: hostdContract[endpoint as HostdEndpoint].reply,
        handler: (req: unknown) => {
          if (endpoint !== 'fork') calls.push({ host, endpoint });
          return handler(req);
        },
      })),
      log,
    );
  }

  before(async () => {
    nats = await startNatsServer();
    sched = await startScheduler(loadSchedulerConfig({ nats: { servers: [nats.url] }, logLevel: 'warn' }), log);
    nc = await connect({ servers: nats.url });
    client = new SchedulerClient(nc, { timeoutMs: 20_000 });
    const buckets = await openBuckets(nc);
    await buckets.locator.put(`snap.${SNAP}`, JSON.stringify({ host: 'pf-a' }));
    for (const h of HOSTS) services.push(await fakeHost(h));
    const send = (): void => HOSTS.forEach((h) => nc.publish(subjects.heartbeat(h), JSON.stringify(beat(h))));
    send();
    beats = setInterval(send, 200);
    await pollUntil(async () => ((await client.call('hosts', {})).hosts.filter((h) => h.alive).length === 3 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'the scheduler seeing three live fake hosts',
    });
  });
  after(async () => {
    clearInterval(beats);
    for (const s of services) await s.stop();
    await sched?.stop();
    await nc?.close();
    await nats?.stop();
  });

  it('fails the fork with the publish error, re-places no share, and destroys what home made', async () => {
    const e = await refused(client.call('fork', { source: SNAP, count: 6, spread: true }));
    assert.equal(e.code, 'CAPACITY', e.message);
    assert.match(e.message, /object store full/);
    const forks = calls.filter((c) => c.endpoint === 'fork');
    assert.deepEqual(
      forks.map((c) => c.host),
      ['pf-a'],
      'home forked its share once; no target forked, none of their shares went home',
    );
    assert.equal(calls.filter((c) => c.endpoint === 'snapshot.fetch').length, 0, 'nothing fetched');
    assert.equal(calls.filter((c) => c.endpoint === 'snapshot.publish').length, 1, 'published once');
    assert.equal(destroyed.length, forks[0]?.count, "home's children destroyed");
  });
});
