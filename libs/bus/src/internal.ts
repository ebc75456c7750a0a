// What tests reach beyond the public face (index.ts), as `@forky/bus/internal`; not for other packages.
export * from './index.js';
export { safeHeaders } from './headers.js';
export { clientStreamState } from './streams.js';
export { parseJsonBytes } from './entries.js';
export { encodeMap, decodeMap, PAGE, MAX_MAP_BYTES, TOMBSTONE, type ChunkMap } from './chunk-map.js';
export { diffMap, applyDelta } from './chunk-delta.js';
export { encodeSparse } from './sparse.js';
export { walk, writeAll } from './chunk-walk.js';
export { assemble } from './chunk-fetch.js';
export { sweepParts } from './parts-sweep.js';
export { streamObject } from './obj-stream.js';
export { ChunkMapCache } from './chunk-cache.js';
export { byHash } from './chunk-map.js';
export { scanFile } from './chunk-scan.js';
