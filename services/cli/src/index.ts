export { up, down, status, readCluster, type ClusterFile } from './local-cluster.js';
export { packAppDir, parseAppSpec, uploadApps } from './apps.js';
export { buildProgram } from './program.js';
export { formatTable } from './output.js';
export type { CliDeps } from './commands/context.js';
export type { Session, SessionOptions } from './session.js';
export { collectEnv, parseCp, parseCpSide, parseSignal, type CpPlan, type CpSide } from './sandbox-args.js';
export { encodeOutput, exitCodeOf, type CliStream, type StreamChunk, type StreamEnd } from './streams-io.js';
export { formatWatchEvent } from './commands/watch.js';
