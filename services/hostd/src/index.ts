export { startHostd, HOSTD_VERSION, type Hostd } from './hostd.js';
export { loadHostdConfig, HostdConfig, type HostdConfigInput, defaultHostId } from './config.js';
export { HostEngine, type EngineDeps, type EngineLimits } from './domain/engine.js';
export type { VmRuntime, VmHandle, VmSpec, LayerStore, SnapshotStore } from './domain/ports.js';
export { assertAllowed, assertTransition, type VmOp } from './domain/state.js';
export { buildArgs } from './adapters/qemu/cmdline.js';
export { ImageCatalog, type Image } from './images.js';
export { startEphemeralHostd, type EphemeralHostd } from './ephemeral.js';
export { ObjectPartStore, PARTS_BUCKET } from './adapters/store/object-parts.js';
