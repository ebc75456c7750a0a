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

/** What a nats-server config says: everything the server runs with, so a reload or restart changes only what the file changed. */
export interface ServerConfig extends Pick<NatsServerOptions, 'auth' | 'tls' | 'port' | 'cluster'> {
  /** JetStream store (nats-server keeps its files in `<storeDir>/jetstream`); no JetStream without it. */
  storeDir?: string;
  /** Listen address; default loopback. */
  host?: string;
}

/**
 * The nats-server config for `opts` (JSON, which nats-server reads). JetStream, the port and the
 * address are in the file, not flags: a SIGHUP reload applies the file, and a server reloaded
 * from a file without a `jetstream` block shuts JetStream down.
 */
export function serverConfig(opts: ServerConfig): Record<string, unknown> {
  const c = opts.cluster;
  return {
    host: opts.host ?? '127.0.0.1',
    port: opts.port ?? -1,
    ...(opts.storeDir ? { jetstream: { store_dir: opts.storeDir } } : {}),
    ...(c ? { server_name: c.serverName, cluster: { name: c.name, host: '127.0.0.1', port: c.port, routes: c.routes } } : {}),
    ...(opts.auth ? authorizationConfig(opts.auth) : {}),
    ...(opts.tls ? { tls: { cert_file: opts.tls.certFile, key_file: opts.tls.keyFile, timeout: 5 } } : {}),
  };
}

/** Writes the config (mode 0600: it holds passwords); true if the file changed. */
export async function writeServerConfig(file: string, opts: ServerConfig): Promise<boolean> {
  const text = JSON.stringify(serverConfig(opts), null, 2);
  if ((await fs.readFile(file, 'utf8').catch(() => undefined)) === text) return false;
  await fs.writeFile(file, text, { mode: 0o600 });
  // writeFile keeps the mode of a file that exists.
  await fs.chmod(file, 0o600);
  return true;
}

/**
 * Starts nats-server (from PATH) with JetStream, on loopback, on a port the kernel picks unless
 * told (-1), from a config file (see serverConfig). Ready when it logs the port it listens on
 * and "Server is ready": no port race, no sleep.
 */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const ownStore = !opts.storeDir;
  const storeDir = opts.storeDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'forky-nats-')));
  await fs.mkdir(storeDir, { recursive: true });
  const conf = path.join(storeDir, 'forky-nats.conf');
  await writeServerConfig(conf, { ...opts, storeDir });
  const child = spawn(opts.binary ?? 'nats-server', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
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
