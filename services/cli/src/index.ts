export { up, down, status, readCluster, type ClusterFile } from './local-cluster.js';
export { packAppDir, parseAppSpec, uploadApps } from './apps.js';
export { buildProgram } from './program.js';
export { formatTable } from './output.js';
export type { CliDeps } from './commands/context.js';
export type { Session, SessionOptions } from './session.js';
