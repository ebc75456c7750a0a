export { up, down, status, readCluster, type ClusterFile } from './cluster.js';
