import fs from 'node:fs/promises';
import path from 'node:path';
import type { ClusterFile } from '@forky/sdk';
import { isAlive } from './pids.js';

export interface ClusterProcess {
  role: 'nats' | 'scheduler' | 'hostd';
  pid: number;
  host?: string;
}

/**
 * What runs of the local cluster: its server and its live processes, read from the cluster.json
 * `forky up` wrote (the SDK's `clusterFile`), and no request. Reads the file itself rather than
 * through @forky/sdk, whose index brings NATS and the contract: `forky status` stays a file read.
 */
export async function status(data: string): Promise<{ server: string | null; processes: ClusterProcess[] }> {
  const cluster = await fs.readFile(path.join(data, 'cluster.json'), 'utf8').then(
    (t) => JSON.parse(t) as ClusterFile,
    () => undefined,
  );
  return { server: cluster?.server ?? null, processes: (cluster?.processes ?? []).filter((p) => isAlive(p.pid)) };
}
