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
import { fakeBeat } from './fake-beat.js';

/** A fake host's heartbeat, holding `snap`. */
export const forkHostBeat = (id: string, snap: string): Heartbeat =>
  fakeBeat(id, { memTotalMiB: 8000, memFreeMiB: 4000, snapshotIds: [snap] });

export const fakeSnapshot = (snap: string, host: string, vm: string): SnapshotInfo => ({
  id: snap,
  host,
  image: 'tiny',
  vm,
  profile: { accel: 'tcg', qemuVersion: '7.2.0', machine: 'pc', cpuModel: 'max', cpus: 1, memMiB: 256, imageId: 'x' },
  createdAt: new Date().toISOString(),
  sizes: { stateBytes: 1, ramBytes: 1, diskBytes: 1 },
});

export type FakeHandler = (req: unknown) => Promise<unknown>;

export interface FakeForkCluster {
  client: SchedulerClient;
  /** Every call a host got: host, endpoint, and a fork's key and count. */
  calls: Array<{ host: string; endpoint: string; key?: string; count?: number }>;
  /** Hosts whose fork fails now (UNAVAILABLE). */
  failing: Set<string>;
  /** Children destroyed, by id. */
  destroyed: string[];
  stop(): Promise<void>;
}

/**
 * A real nats-server and scheduler over fake hosts (our own micro services, checked against the
 * contract as hostd's are), for the scheduler's cross-host fork without QEMU. `home` holds
 * `snap`; `handlers` replaces a host's endpoints (a publish that fails…).
 */
export async function startFakeForkCluster(o: {
  snap: string;
  vm: string;
  hosts: string[];
  home: string;
  handlers?: (host: string) => Partial<Record<HostdEndpoint, FakeHandler>>;
}): Promise<FakeForkCluster> {
  const log = createLogger({ level: (process.env.FORKY_TEST_LOG as 'debug' | undefined) ?? 'error', name: 'test' });
  const calls: FakeForkCluster['calls'] = [];
  const failing = new Set<string>();
  const destroyed: string[] = [];
  const services: Service[] = [];
  let made = 0;
  let nats: NatsServer | undefined;
  let sched: RunningScheduler | undefined;
  let nc: NatsConnection | undefined;
  let beats: NodeJS.Timeout | undefined;
  const stop = async (): Promise<void> => {
    clearInterval(beats);
    for (const s of services) await s.stop();
    await sched?.stop();
    await nc?.close();
    await nats?.stop();
  };

  const fakeHost = (conn: NatsConnection, host: string): Promise<Service> => {
    const transfer = async (): Promise<TransferResult> => ({ id: o.snap, host, parts: 1, moved: 0, bytes: 0, nominalBytes: 0, ms: 1 });
    const handlers: Partial<Record<HostdEndpoint, FakeHandler>> = {
      'snapshot.show': async () => fakeSnapshot(o.snap, host, o.vm),
      'snapshot.publish': transfer,
      'snapshot.fetch': transfer,
      'vm.destroy': async (req) => {
        const id = (req as { id: string }).id;
        destroyed.push(id);
        return { id, host, state: 'destroyed', image: 'tiny', memMiB: 256, cpus: 1, accel: 'tcg', createdAt: new Date().toISOString() };
      },
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
          parentSnapshot: o.snap,
          createdAt: new Date().toISOString(),
        }));
        return {
          snapshot: fakeSnapshot(o.snap, host, o.vm),
          children,
          timings: { snapshotMs: 0, totalMs: 1, childMs: children.map(() => 1) },
        } satisfies ForkResult;
      },
      ...o.handlers?.(host),
    };
    return startService(
      conn,
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
  };

  try {
    nats = await startNatsServer();
    sched = await startScheduler(loadSchedulerConfig({ nats: { servers: [nats.url] }, logLevel: 'warn' }), log);
    const conn = await connect({ servers: nats.url });
    nc = conn;
    const client = new SchedulerClient(conn, { timeoutMs: 20_000 });
    const buckets = await openBuckets(conn);
    await buckets.locator.put(`snap.${o.snap}`, JSON.stringify({ host: o.home }));
    for (const h of o.hosts) services.push(await fakeHost(conn, h));
    const send = (): void => o.hosts.forEach((h) => conn.publish(subjects.heartbeat(h), JSON.stringify(forkHostBeat(h, o.snap))));
    send();
    beats = setInterval(send, 200);
    await pollUntil(
      async () => ((await client.call('hosts', {})).hosts.filter((h) => h.alive).length === o.hosts.length ? true : undefined),
      { timeoutMs: 10_000, what: `the scheduler seeing ${o.hosts.length} live fake hosts` },
    );
    return { client, calls, failing, destroyed, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
