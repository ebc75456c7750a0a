// What tests reach beyond the public face (index.ts), as `@forky/bus/internal`; not for other packages.
export * from './index.js';
export { safeHeaders } from './headers.js';
export { clientStreamState } from './streams.js';
export { parseJsonBytes } from './entries.js';
