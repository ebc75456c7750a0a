// What tests (and benches) of @forky/hostd reach beyond its public face (index.ts): the engine's
// parts, the dry-run runtime and the local stores it is tested on. Not for other packages' code.
export * from './index.js';
export { buildArgs } from './adapters/qemu/cmdline.js';
export { askLine } from './adapters/qemu/control.js';
export { launchCommand } from './adapters/qemu/process.js';
export { copyPrivatePages, type ProcFiles } from './adapters/qemu/private-pages.js';
export { softDirtyTracked } from './adapters/qemu/soft-dirty.js';
export { overlayBytes, writeOverlay, MAX_NATIVE_SIZE } from './adapters/qemu/qcow2-overlay.js';
export { ImageCatalog } from './images.js';
export { WarmPool, loadWarm, type WarmChild, type WarmPoolOptions } from './domain/warm-pool.js';
export { discoverGpus, type GpuDiscovery } from './adapters/gpu.js';
export { GpuAllocator, type Gpu } from './domain/gpus.js';
export { AppMounter, APP_SLOTS, appSerial, type AppDevice } from './domain/apps.js';
export { Host, type WarmMaker } from './domain/host.js';
export { Requests, EXEC_MEMORY } from './domain/requests.js';
export { Rollback, withRollback } from './domain/rollback.js';
export {
  admitVms,
  checkProfile,
  refuseGpuSnapshot,
  RamAdmission,
  UNLIMITED_RAM,
  knownRamFiles,
  ramNeed,
  type RamFile,
  type RamHold,
  type RamNeed,
} from './domain/admission.js';
export type {
  AppLayerStore,
  Directory,
  NetworkFilter,
  PartStore,
  RamSpace,
  RunningProcess,
  AppDisk,
  SnapshotFiles,
} from './domain/ports.js';
export type { SnapshotRecord, VmRecord } from './domain/records.js';
export { Layout } from './layout.js';
export { DryRunLayerStore, DryRunRuntime } from './adapters/dry-run.js';
export { NatsEventSink, type EventCounts } from './adapters/events.js';
export { LocalSnapshotStore } from './adapters/store/local-snapshots.js';
export { LocalAppLayers } from './adapters/store/app-layers.js';
export { FileRecordStore, writeJsonAtomic } from './adapters/store/records.js';
export { ProcHostStats } from './adapters/host-stats.js';
export { GuestStreams, type GuestStreamsOptions, type GuestHandlers } from './streams/endpoints.js';
export { Bridge, type BridgeCounters } from './streams/bridge.js';
export { StreamRegistry, DEFAULT_STREAM_LIMITS, newSid, type StreamLimits } from './streams/registry.js';
export {
  openNetworkFilter,
  probeNftables,
  NftNetworkFilter,
  RestrictFilter,
  type NetworkFilterOptions,
  type OpenedNetworkFilter,
} from './adapters/net/index.js';
export * as netFilter from './adapters/net/index.js';
export { ApplyBatches, type BatchSteps } from './adapters/net/apply-batch.js';
export { PssSamples, PSS_MAX_AGE_MS, PSS_REFRESH_PER_REPORT } from './domain/pss-samples.js';
export { followPeers, ownAddresses, peerAddresses, urlAddresses } from './cluster-peers.js';
export type { SelfForkLine, SelfForkListener } from './domain/ports.js';
export { ForkPort, ForkPorts, LineReader, PORT_BYTES } from './adapters/qemu/fork-port.js';
export { SelfForkRefusal, TokenBucket, aliveInTree, checkBudget, type SelfForkRecord } from './domain/self-fork-tree.js';
export { SelfForkResults } from './domain/self-fork-results.js';
export { SELF_FORK_RATE } from './domain/ops/self-fork.js';
export { NO_ID, parseLine } from './domain/self-fork-lines.js';
export { childSelfFork, spreadToken } from './domain/self-fork-tree.js';
export { Lifetimes, dueOf, type Due, type LifetimesTiming } from './domain/lifetimes.js';
