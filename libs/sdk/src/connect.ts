import fs from 'node:fs/promises';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError } from '@forky/base';
import { connectBus } from '@forky/bus';

/** What `forky up` writes in its data directory (`cluster.json`). */
export interface ClusterFile {
  server: string;
  processes: Array<{ role: 'nats' | 'scheduler' | 'hostd'; pid: number; host?: string }>;
  /** The operator's credentials (0600) and the CA to trust, when the cluster has them. */
  authFile?: string;
  caFile?: string;
}

/** How to reach a cluster: a NATS URL, and the credentials and CA to use there. */
export interface Connection {
  server: string;
  authFile?: string;
  caFile?: string;
}

/** The data directory `forky up` uses by default: FORKY_DATA, else ./.forky. */
export const defaultDataDir = (): string => path.resolve(process.env.FORKY_DATA ?? '.forky');

export const clusterFile = (data: string): string => path.join(data, 'cluster.json');

export async function readCluster(data: string): Promise<ClusterFile | undefined> {
  try {
    return JSON.parse(await fs.readFile(clusterFile(data), 'utf8')) as ClusterFile;
  } catch {
    return undefined;
  }
}

/**
 * The server to talk to: the one given, FORKY_SERVER, or the cluster `forky up` started in the data
 * dir; credentials from FORKY_NATS_AUTH_FILE or that cluster's operator; the CA likewise.
 */
export async function resolveConnection(server: string | undefined, data: string): Promise<Connection> {
  const env = (k: string): string | undefined => process.env[k] || undefined;
  const local = await readCluster(data);
  const s = server ?? env('FORKY_SERVER') ?? local?.server;
  if (!s) throw new ForkyError('UNAVAILABLE', `no cluster found: no server given, no FORKY_SERVER, and no ${clusterFile(data)}`);
  const authFile = env('FORKY_NATS_AUTH_FILE') ?? local?.authFile;
  const caFile = env('FORKY_NATS_CA') ?? local?.caFile;
  return { server: s, ...(authFile ? { authFile } : {}), ...(caFile ? { caFile } : {}) };
}

export async function connectTo(c: Connection, name = 'forky-sdk', timeoutMs = 5000): Promise<NatsConnection> {
  try {
    return await connectBus({
      servers: c.server,
      name,
      timeoutMs,
      ...(c.authFile ? { authFile: c.authFile } : {}),
      ...(c.caFile ? { tls: { caFile: c.caFile } } : {}),
    });
  } catch (e) {
    if (e instanceof ForkyError) throw e;
    throw new ForkyError('UNAVAILABLE', `cannot reach NATS at ${c.server}: ${(e as Error).message}`, { cause: e });
  }
}
