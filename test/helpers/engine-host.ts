import fs from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { createLogger, silentLogger, type Logger } from '@forky/base';
import { HostEngine, ImageCatalog, type EngineDeps, type EngineLimits, type LayerStore, type SnapshotStore } from '@forky/hostd/internal';
import { FaultPlan, withFaults } from './fault-plan.js';
import { FaultRuntime } from './fault-runtime.js';
import { fileTree } from './files.js';
import {
  DryRunLayerStore,
  DryRunRuntime,
  FileRecordStore,
  Layout,
  LocalAppLayers,
  LocalSnapshotStore,
  ProcHostStats,
} from './hostd-internals.js';
import { MemoryDirectory } from './memory-directory.js';
import { FakeNetworkFilter } from './fake-network.js';

/** One hostd engine without QEMU or NATS: dry-run processes, real stores over a temp dir, faults on call. */
export interface EngineHost {
  engine: HostEngine;
  runtime: FaultRuntime;
  /** Arms faults in the runtime, the layer store, the snapshot store and the directory alike. */
  plan: FaultPlan;
  layers: LayerStore;
  snapshots: SnapshotStore;
  directory: MemoryDirectory;
  network: FakeNetworkFilter;
  dataDir: string;
  ramDir: string;
  /** Every file of the host, data and RAM directories (`data/…:size`, `ram/…:size`). */
  files(): Promise<string[]>;
  /** A new engine on the same directories, processes and directory, recovered: a restarted hostd. */
  restart(): Promise<EngineHost>;
  /** Removes the host's directories. */
  close(): Promise<void>;
}

export const TEST_LIMITS: EngineLimits = {
  bootTimeoutMs: 5000,
  restoreTimeoutMs: 5000,
  forkConcurrency: 4,
  maxVms: 64,
  // The capacity check reads the real /proc/meminfo: ask for next to nothing.
  childCostMiB: 1,
  reserveMiB: 0,
  maxChainDepth: 16,
  agentTimeoutMs: 5000,
};

const IMAGE = 'tiny';
const hex = (c: string): string => c.repeat(64);

/** A catalog entry the dry run can "boot": the manifest only, its files are never opened. */
async function writeImage(dir: string): Promise<void> {
  const part = (file: string, c: string) => ({ file, sha256: hex(c), size: 1 });
  const manifest = {
    schema: 'forky.image/v1',
    name: IMAGE,
    id: `sha256:${hex('a')}`,
    cmdline: 'console=ttyS0',
    kernelVersion: 'test',
    parts: { kernel: part('vmlinuz', 'b'), initrd: part('initrd.img', 'c'), disk: { ...part('disk.qcow2', 'd'), virtualSize: 1 << 30 } },
  };
  await fs.mkdir(path.join(dir, IMAGE), { recursive: true });
  await fs.writeFile(path.join(dir, IMAGE, 'manifest.json'), JSON.stringify(manifest));
}

function logger(): Logger {
  const level = process.env.FORKY_TEST_LOG as 'debug' | undefined;
  return level ? createLogger({ level, name: 'engine-test' }) : silentLogger();
}

/** `parts`, `pool`, `hostId`: an object store (shared by hosts of one test), a warm pool, a host id other than h-test. */
export type EngineHostOptions = {
  limits?: Partial<EngineLimits>;
  events?: EngineDeps['events'];
  parts?: EngineDeps['parts'];
  pool?: EngineDeps['pool'];
  hostId?: string;
};

export async function startEngineHost(opts: EngineHostOptions = {}): Promise<EngineHost> {
  // Under /tmp, short: the dry run checks its socket paths against the 107-byte limit.
  const root = await fs.mkdtemp(path.join('/tmp', 'fk-eng-'));
  await writeImage(path.join(root, 'images'));
  const plan = new FaultPlan();
  return build({
    root,
    limits: { ...TEST_LIMITS, ...opts.limits },
    plan,
    runtime: new FaultRuntime(new DryRunRuntime(), plan),
    directory: new MemoryDirectory(),
    network: new FakeNetworkFilter(),
    ...(opts.events ? { events: opts.events } : {}),
    ...(opts.parts ? { parts: opts.parts } : {}),
    ...(opts.pool ? { pool: opts.pool } : {}),
    ...(opts.hostId ? { hostId: opts.hostId } : {}),
  });
}

interface Shared {
  root: string;
  limits: EngineLimits;
  plan: FaultPlan;
  runtime: FaultRuntime;
  directory: MemoryDirectory;
  /** Like the kernel's filter state, it outlives a restarted engine. */
  network: FakeNetworkFilter;
  /** Where the engine's events go (default: nowhere). */
  events?: EngineDeps['events'];
  parts?: EngineDeps['parts'];
  pool?: EngineDeps['pool'];
  hostId?: string;
}

function build(s: Shared): EngineHost {
  const dataDir = path.join(s.root, 'data');
  const ramDir = path.join(s.root, 'ram');
  const layout = new Layout(dataDir, ramDir);
  const layers = withFaults('layers', new DryRunLayerStore(layout), s.plan, ['path']);
  const snapshots = withFaults('snapshots', new LocalSnapshotStore(layout), s.plan, ['files']);
  const engine = new HostEngine({
    hostId: s.hostId ?? 'h-test',
    accelReason: 'dry run',
    runtime: s.runtime,
    layers,
    appLayers: new LocalAppLayers(layout),
    snapshots,
    records: new FileRecordStore(layout),
    stats: new ProcHostStats(),
    images: new ImageCatalog(path.join(s.root, 'images')),
    layout,
    limits: s.limits,
    network: s.network,
    logger: logger(),
    directory: withFaults('directory', s.directory, s.plan),
    ...(s.events ? { events: s.events } : {}),
    ...(s.parts ? { parts: s.parts } : {}),
    ...(s.pool ? { pool: s.pool } : {}),
  });
  return {
    engine,
    runtime: s.runtime,
    plan: s.plan,
    layers,
    snapshots,
    directory: s.directory,
    network: s.network,
    dataDir,
    ramDir,
    async files() {
      // The dry run rewrites qemu-args.json for each process of a VM: its presence counts, not its size.
      const norm = (f: string): string => f.replace(/qemu-args\.json:\d+$/, 'qemu-args.json');
      return [...(await fileTree(dataDir)).map((f) => `data/${norm(f)}`), ...(await fileTree(ramDir)).map((f) => `ram/${f}`)];
    },
    async restart() {
      await engine.close();
      const next = build(s);
      await next.engine.recover();
      return next;
    },
    async close() {
      await engine.close();
      await fs.rm(s.root, { recursive: true, force: true });
    },
  };
}

/** A host for one test, removed when the test ends (tests with hosts of their own may run side by side). */
export async function hostFor(t: TestContext, opts: EngineHostOptions = {}): Promise<EngineHost> {
  const h = await startEngineHost(opts);
  t.after(() => h.close());
  return h;
}

/** Files of the host that name `id` (a VM's directory and RAM file, a snapshot's directory and RAM). */
export async function filesOf(host: EngineHost, id: string): Promise<string[]> {
  return (await host.files()).filter((f) => f.includes(id));
}
