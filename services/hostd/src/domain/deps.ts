import type { ForkResult, SelfForkSchedRequest } from '@forky/contract';
import type { Logger } from '@forky/base';
import type { ImageCatalog } from '../images.js';
import type { Layout } from '../layout.js';
import type {
  AppLayerStore,
  Directory,
  EventSink,
  HostStats,
  LayerStore,
  NetworkFilter,
  PartStore,
  RamSpace,
  RecordStore,
  SnapshotStore,
  VmRuntime,
} from './ports.js';
import type { WarmPoolOptions } from './warm-pool.js';
import type { GpuAllocator } from './gpus.js';

export interface EngineLimits {
  bootTimeoutMs: number;
  restoreTimeoutMs: number;
  /** Children started at once during a fork. */
  forkConcurrency: number;
  maxVms: number;
  /** What one forked child is assumed to cost, for the capacity check. */
  childCostMiB: number;
  /** Memory kept free for the host itself. */
  reserveMiB: number;
  /** Disk layers a VM's chain may reach before a snapshot flattens it. */
  maxChainDepth: number;
  agentTimeoutMs: number;
  /** How long a snapshot nothing uses is kept before it expires (retention.ts); 0 or absent: never. */
  snapshotRetentionMs?: number;
  /** A soft-dirty pre-copy of a child's private pages before a snapshot's pause (config.ts: off by default). */
  snapshotPrecopy?: boolean;
  /** Self-fork requests a tree may send a second, and save up (absent: SELF_FORK_RATE). */
  selfForkRate?: { perSec: number; burst: number };
}

/** What the engine is built from: ports (runtime, stores, directory, stats) and settings. */
export interface EngineDeps {
  hostId: string;
  /** Why the runtime's accelerator was chosen (the probe's outcome). */
  accelReason: string;
  runtime: VmRuntime;
  layers: LayerStore;
  /** App layers (packed directories) kept on this host. */
  appLayers: AppLayerStore;
  snapshots: SnapshotStore;
  /** VM, snapshot and request records, and the files a VM leaves. */
  records: RecordStore;
  /** The host's memory as its kernel reports it. */
  stats: HostStats;
  images: ImageCatalog;
  layout: Layout;
  limits: EngineLimits;
  logger: Logger;
  /** Each VM's egress filter. */
  network: NetworkFilter;
  /** Where the cluster learns which host holds what; none for a host on its own. */
  directory?: Directory;
  /** The object store snapshots travel through; none for a host on its own. */
  parts?: PartStore;
  /** Called when the set of VMs or snapshots changes, so a heartbeat can go out soon. */
  onChange?: () => void;
  /** Processes kept waiting per hot snapshot (default: none). */
  pool?: WarmPoolOptions;
  /** Who holds this host's passthrough GPUs (default: the host has none). */
  gpus?: GpuAllocator;
  /** The RAM directory's filesystem, for admission (default: unchecked, as in a dry run). */
  ramSpace?: RamSpace;
  /** Where VM and snapshot events are published (default: nowhere). */
  events?: EventSink;
  /** The scheduler's fork, for a guest's `forky-fork --spread` (children on other hosts); none: refused. */
  schedulerFork?: (req: SelfForkSchedRequest) => Promise<ForkResult>;
}
