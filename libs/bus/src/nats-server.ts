import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { withDeadline } from '@forky/base';
import { authorizationConfig, type ClusterAuth } from './auth.js';

export interface NatsServer {
  url: string;
  port: number;
  /** Where other nodes route to, when this node is part of a cluster. */
  clusterUrl?: string;
  storeDir: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export interface NatsServerOptions {
  timeoutMs?: number;
  binary?: string;
  /** JetStream store; default a temp dir removed on stop. */
  storeDir?: string;
  /** Client port; default one the kernel picks. */
  port?: number;
  /** Users and their permissions (see auth.ts); default: no authentication. */
  auth?: ClusterAuth;
  /** TLS for client connections. */
  tls?: { certFile: string; keyFile: string };
  /**
   * A node of a JetStream cluster: its server name (stable across restarts: JetStream knows its
   * peers by it), its route port and every node's route URL (a JetStream cluster refuses to start
   * without configured routes, so the ports are known before any node starts).
   */
  cluster?: { name: string; serverName: string; port: number; routes: string[] };
}

/** The nats-server config file for `auth` and `tls` (JSON, which nats-server reads), mode 0600. */
export async function writeServerConfig(file: string, opts: Pick<NatsServerOptions, 'auth' | 'tls'>): Promise<void> {
  const conf = {
    ...(opts.auth ? authorizationConfig(opts.auth) : {}),
    ...(opts.tls ? { tls: { cert_file: opts.tls.certFile, key_file: opts.tls.keyFile, timeout: 5 } } : {}),
  };
  await fs.writeFile(file, JSON.stringify(conf, null, 2), { mode: 0o600 });
}

/**
 * Starts nats-server (from PATH) with JetStream, on loopback, on a port the kernel picks unless
 * told (-p -1). Ready when it logs the port it listens on and "Server is ready": no port race, no sleep.
 */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const ownStore = !opts.storeDir;
  const storeDir = opts.storeDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'forky-nats-')));
  const args = ['-a', '127.0.0.1', '-p', String(opts.port ?? -1), '-js', '-sd', storeDir];
  if (opts.cluster) {
    const c = opts.cluster;
    args.push('-n', c.serverName, '--cluster_name', c.name, '--cluster', `nats://127.0.0.1:${c.port}`, '--routes', c.routes.join(','));
  }
  if (opts.auth || opts.tls) {
    const conf = path.join(storeDir, 'forky-nats.conf');
    await writeServerConfig(conf, opts);
    args.unshift('-c', conf);
  }
  const child = spawn(opts.binary ?? 'nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let log = '';
  const port = await withDeadline(
    new Promise<number>((resolve, reject) => {
      child.stderr?.on('data', (d: Buffer) => {
        // Only the start is needed; the rest is drained and dropped.
        if (log.length > 1 << 16) return;
        log += d.toString();
        const m = /Listening for client connections on [\d.]+:(\d+)/.exec(log);
        if (m?.[1] && log.includes('Server is ready')) resolve(Number(m[1]));
      });
      child.once('error', reject);
      void exited.then(() => reject(new Error(`nats-server exited: ${log.slice(-500)}`)));
    }),
    opts.timeoutMs ?? 10_000,
    'nats-server start',
  );
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    ...(opts.cluster ? { clusterUrl: `nats://127.0.0.1:${opts.cluster.port}` } : {}),
    storeDir,
    process: child,
    async stop() {
      child.kill('SIGTERM');
      await withDeadline(exited, 5000, 'nats-server stop').catch(() => child.kill('SIGKILL'));
      if (ownStore) await fs.rm(storeDir, { recursive: true, force: true });
    },
  };
}
