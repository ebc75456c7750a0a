export { up, down, status, readCluster, type ClusterFile } from './cluster.js';
export { packAppDir, parseAppSpec, uploadApps } from './apps.js';
