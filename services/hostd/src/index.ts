// The public face of @forky/hostd: what other packages use (start a hostd, its config, the engine
// and the ports to build one). Tests reach the rest through internal.ts (`@forky/hostd/internal`).
export { startHostd, HOSTD_VERSION, type Hostd } from './hostd.js';
export { loadHostdConfig, HostdConfig, type HostdConfigInput, defaultHostId } from './config.js';
export { startEphemeralHostd, type EphemeralHostd } from './ephemeral.js';
export { HostEngine, type EngineDeps, type EngineLimits } from './domain/engine.js';
export type { VmRuntime, VmHandle, VmSpec, LayerStore, SnapshotStore, RecordStore, HostStats } from './domain/ports.js';
export type { Image } from './images.js';
export { assertAllowed, assertTransition, type VmOp } from './domain/state.js';
export { lookupUser, resolveRunAs, DEFAULT_QEMU_USER, type RunAs } from './adapters/qemu/run-as.js';
