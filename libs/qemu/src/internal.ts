// What tests reach beyond the public face (index.ts), as `@forky/qemu/internal`; not for other packages.
export * from './index.js';
export { MAX_REPLY_LINE } from './guest-agent.js';
export { BoundedLineSplitter, LineSplitter, OverlongLine } from './lines.js';
