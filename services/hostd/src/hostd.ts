import fs from 'node:fs/promises';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { newId, type Logger } from '@forky/base';
import { ObjectPartStore, connectBus, openBuckets, request, resolveReplicas } from '@forky/bus';
import { ForkResult, subjects, type Egress, type Heartbeat } from '@forky/contract';
import { enableKsm } from './adapters/ksm.js';
import { LocalAppLayers } from './adapters/store/app-layers.js';
import { discoverGpus } from './adapters/gpu.js';
import { GpuAllocator } from './domain/gpus.js';
import { DryRunLayerStore, DryRunRuntime } from './adapters/dry-run.js';
import type { VmRuntime } from './domain/ports.js';
import { KvDirectory } from './adapters/kv-directory.js';
import { NatsEventSink } from './adapters/events.js';
import { failedWhileDown } from './domain/events.js';
import type { HostdConfig } from './config.js';
import { followPeers, ownAddresses, urlAddresses } from './cluster-peers.js';
import { openNetworkFilter } from './adapters/net/index.js';
import { HostEngine } from './domain/engine.js';
import type { RecoveryReport } from './domain/recovery.js';
import { ImageCatalog } from './images.js';
import { Layout } from './layout.js';
import { QcowLayerStore } from './adapters/qemu/layers.js';
import { QemuRuntime } from './adapters/qemu/runtime.js';
import { resolveRunAs } from './adapters/qemu/run-as.js';
import { probeAccel, qemuVersion, type ProbeResult } from './adapters/qemu/probe.js';
import { LocalSnapshotStore } from './adapters/store/local-snapshots.js';
import { FileRecordStore } from './adapters/store/records.js';
import { ProcHostStats } from './adapters/host-stats.js';
import { StatfsRamSpace } from './adapters/ram-space.js';
import { startHostdService } from './service.js';
import { GuestStreams } from './streams/endpoints.js';

export const HOSTD_VERSION = '0.1.0';
/** A spread self-fork's bound: the snapshot travels through the object store to each host. */
const SPREAD_FORK_MS = 10 * 60_000;

export interface Hostd {
  readonly engine: HostEngine;
  /** What this start took back from an earlier hostd (see recovery.ts). */
  readonly recovered: RecoveryReport;
  readonly probe: ProbeResult;
  readonly nc: NatsConnection;
  readonly service: Service;
  /** Stops serving; with `destroyVms`, also destroys every VM and snapshot of this host. */
  stop(opts?: { destroyVms?: boolean }): Promise<void>;
}

/** Wires the adapters into the engine and serves it on NATS. */
export async function startHostd(config: Readonly<HostdConfig>, logger: Logger): Promise<Hostd> {
  const log = logger.child({ component: 'hostd', host: config.hostId });
  await fs.mkdir(config.dataDir, { recursive: true });
  await fs.mkdir(config.ramDir, { recursive: true });
  const layout = new Layout(path.resolve(config.dataDir), path.resolve(config.ramDir));
  const images = new ImageCatalog(path.resolve(config.imagesDir), layout.imagesByIdDir());

  const probe: ProbeResult = config.dryRun
    ? { accel: 'tcg', reason: 'dry run: no QEMU is started', qemuVersion: 'dry-run' }
    : await chooseAccel(config, images, log);
  const runAs = config.dryRun ? undefined : await resolveRunAs(config.qemu.runAs, [layout.dataDir, layout.ramDir], log);
  // Before any VM process: those a restart takes back are re-filtered, and every new one starts filtered.
  const network = await openNetworkFilter({
    hostId: config.hostId,
    natsServers: config.nats.servers,
    deny: config.network.deny,
    ...(config.network.resolvers ? { resolvers: config.network.resolvers } : {}),
    mode: config.network.mode,
    // A dry run starts no guest: nothing to filter.
    filter: config.dryRun ? 'none' : config.network.filter,
    log,
  });
  const runtime: VmRuntime = config.dryRun
    ? new DryRunRuntime()
    : new QemuRuntime({
        binary: config.qemu.binary,
        qemuVersion: probe.qemuVersion,
        accel: probe.accel,
        machine: config.qemu.machine,
        cpuModel: config.qemu.cpuModel ?? (probe.accel === 'kvm' ? 'host' : 'qemu64'),
        sandbox: config.qemu.sandbox,
        nice: config.qemu.nice,
        ...(runAs ? { runAs } : {}),
        network: config.network,
        filter: network,
        ...(config.qemu.tcgTbSizeMiB ? { tcgTbSizeMiB: config.qemu.tcgTbSizeMiB } : {}),
        logger: log,
      });
  if (!config.dryRun) await enableKsm(config.ksm, log);
  const { gpus } = await discoverGpus(config.gpu.sysfsRoot, log);
  const nc = await connectBus({ ...config.nats, name: `forky-hostd-${config.hostId}`, logger: log });
  const replicas = resolveReplicas(nc, config.bucketReplicas);
  const buckets = await openBuckets(nc, { replicas });
  let beatSoon: () => void = () => undefined;
  // Chunk maps of the parts this host holds, so a lineage parent is never re-read to ship its child.
  const parts = await ObjectPartStore.open(nc, replicas, { cacheDir: path.join(layout.dataDir, 'part-maps') });
  const events = new NatsEventSink(nc, config.hostId, log.child({ component: 'events' }));
  const engine = new HostEngine({
    events,
    // A guest's spread self-fork goes to the scheduler on this host's own subject (its key makes a resend safe).
    schedulerFork: async (req) => ForkResult.parse(await request(nc, subjects.selfFork(config.hostId), req, { timeoutMs: SPREAD_FORK_MS })),
    onChange: () => beatSoon(),
    directory: new KvDirectory(buckets.locator, buckets.lineage, config.hostId),
    parts,
    appLayers: new LocalAppLayers(layout, parts),
    hostId: config.hostId,
    accelReason: probe.reason,
    runtime,
    layers: config.dryRun ? new DryRunLayerStore(layout) : new QcowLayerStore(layout, config.qemu.img),
    snapshots: new LocalSnapshotStore(layout),
    records: new FileRecordStore(layout),
    stats: new ProcHostStats(),
    images,
    layout,
    network,
    limits: { ...config.limits, snapshotRetentionMs: config.snapshotRetentionMs },
    pool: config.pool,
    gpus: new GpuAllocator(gpus, config.hostId),
    // A dry run's RAM files stay empty: nothing to admit against.
    ...(config.dryRun ? {} : { ramSpace: new StatfsRamSpace(layout.ramDir) }),
    logger: log,
  });
  // Other hosts are refused to VMs from the start: read before VMs are taken back or served.
  // …and every 10 s the filter checks it is still in place (a `flush ruleset` would open every VM).
  let upkeepVms: () => Array<{ id: string; egress: Egress }> = () => [];
  const stopPeers = await followPeers(
    buckets.hosts,
    config.hostId,
    network,
    log,
    () => network.upkeep(upkeepVms()),
    () => urlAddresses(nc.info?.connect_urls ?? []),
  );
  // Before serving: VMs an earlier hostd of this data directory left running are taken back.
  const recovered = await engine.recover();
  // Publishes under way in the last run died with it: their markers go, so fetches elsewhere do not wait on them.
  await parts.clearMarkers(config.hostId).then(
    (n) => n > 0 && log.info({ markers: n }, 'publish markers of the last run removed'),
    (err: unknown) => log.warn({ err }, 'publish markers of the last run not removed'),
  );
  // Their QEMU died while no hostd was there to say so: said now.
  for (const v of engine.list()) if (recovered.failed.includes(v.id)) events.publish(failedWhileDown(config.hostId, v));
  upkeepVms = () => engine.list().flatMap((v) => (v.network && v.state !== 'failed' ? [{ id: v.id, egress: v.network.egress }] : []));
  const streams = new GuestStreams({
    nc,
    hostId: config.hostId,
    guest: (id) => engine.guest(id),
    onActivity: (id) => engine.touch(id),
    work: (id) => engine.work(id),
    log,
  });
  streams.start();
  const instance = newId('hd', 12);
  const service = await startHostdService(nc, config.hostId, engine, HOSTD_VERSION, log, streams.handlers(), instance);
  log.info({ accel: probe.accel, reason: probe.reason, qemu: probe.qemuVersion, network: network.describe() }, 'hostd serving');

  /**
   * `full` (each period): with the VM list, and into the hosts bucket. A change's beat is only the
   * counts and capacity on the subject: a busy host changes many times a period, and a list of
   * every VM in each of those beats cost the scheduler a parse per VM (the list is read only once
   * the host is down, to show its VMs as lost; it lags a change by at most one period).
   */
  const beat = async (full: boolean): Promise<void> => {
    const hb: Heartbeat = {
      ...(await engine.hostInfo()),
      // Built only for the beat that carries it: a change's beat comes every 100 ms in a big fork.
      ...(full ? { vmList: engine.list() } : {}),
      snapshotIds: engine.snapshotIds(),
      ts: Date.now(),
      intervalMs: config.heartbeatMs,
      instance,
      addrs: ownAddresses(),
    };
    const body = JSON.stringify(hb);
    nc.publish(subjects.heartbeat(config.hostId), body);
    if (full) await buckets.hosts.put(config.hostId, body);
  };
  // A first beat lost to a cluster still electing leaders is not fatal: the next one follows.
  await beat(true).catch((err: unknown) => log.warn({ err }, 'first heartbeat failed'));
  const timer = setInterval(() => void beat(true).catch((err: unknown) => log.warn({ err }, 'heartbeat failed')), config.heartbeatMs);
  // A change (a VM made or gone) is reported within 100 ms, not at the next period: coalesced.
  let pendingBeat: NodeJS.Timeout | undefined;
  beatSoon = () => {
    pendingBeat ??= setTimeout(() => {
      pendingBeat = undefined;
      void beat(false).catch((err: unknown) => log.warn({ err }, 'heartbeat failed'));
    }, 100);
  };

  return {
    engine,
    recovered,
    probe,
    nc,
    service,
    async stop(opts = {}) {
      clearInterval(timer);
      clearTimeout(pendingBeat);
      stopPeers();
      beatSoon = () => undefined;
      // Each step on its own: a lost NATS connection must not keep VMs from being cleaned up.
      await service.stop().catch((err: unknown) => log.warn({ err }, 'service stop'));
      await streams.stop().catch((err: unknown) => log.warn({ err }, 'streams stop'));
      if (opts.destroyVms) await engine.destroyAll();
      else await engine.close().catch((err: unknown) => log.warn({ err }, 'warm pool cleanup'));
      // The filter stays while any VM of this host may still run (a restarted hostd takes it back).
      await network.close({ vmsLeft: engine.list().length }).catch((err: unknown) => log.warn({ err }, 'network filter close'));
      await nc.drain().catch(() => undefined);
    },
  };
}

async function chooseAccel(config: Readonly<HostdConfig>, images: ImageCatalog, log: Logger): Promise<ProbeResult> {
  if (config.qemu.accel !== 'auto') {
    return { accel: config.qemu.accel, reason: `set by configuration`, qemuVersion: await qemuVersion(config.qemu.binary) };
  }
  const image = await images.get(config.qemu.probeImage);
  return probeAccel(config.qemu.binary, image, {
    cacheFile: config.qemu.probeCacheFile ?? path.join(config.dataDir, 'accel-probe.json'),
    timeoutMs: config.qemu.probeTimeoutMs,
    logger: log,
  });
}
