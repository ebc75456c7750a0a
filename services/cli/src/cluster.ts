import fs from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, delay } from '@forky/base';
import { HostdClient, SchedulerClient, connectBus } from '@forky/bus';
import { prepareLocalAuth } from './local-auth.js';
import { HOSTD_MAIN, IMAGE_RECIPES, SCHEDULER_MAIN } from './paths.js';
import { isAlive, spawnDetached, stopProcess, waitForLog } from './procs.js';
import { progress } from './output.js';

export interface ClusterProcess {
  role: 'nats' | 'scheduler' | 'hostd';
  pid: number;
  host?: string;
}

export interface ClusterFile {
  server: string;
  processes: ClusterProcess[];
  /** The operator's credentials (0600) and the CA to trust, when the cluster has them. */
  authFile?: string;
  caFile?: string;
}

/** How the CLI reaches a cluster. */
export interface Connection {
  server: string;
  authFile?: string;
  caFile?: string;
}

const clusterFile = (data: string): string => path.join(data, 'cluster.json');
/** The tmpfs directory for this cluster's VM memory, one per data directory. */
const ramRootOf = (data: string): string => path.join('/dev/shm', `forky-${createHash('sha256').update(data).digest('hex').slice(0, 8)}`);

export async function readCluster(data: string): Promise<ClusterFile | undefined> {
  try {
    return JSON.parse(await fs.readFile(clusterFile(data), 'utf8')) as ClusterFile;
  } catch {
    return undefined;
  }
}

/**
 * The server to talk to: --server, FORKY_SERVER, or the cluster `forky up` started in the data
 * dir; credentials from FORKY_NATS_AUTH_FILE or that cluster's operator; the CA likewise.
 */
export async function resolveConnection(server: string | undefined, data: string): Promise<Connection> {
  const env = (k: string): string | undefined => process.env[k] || undefined;
  const local = await readCluster(data);
  const s = server ?? env('FORKY_SERVER') ?? local?.server;
  if (!s) throw new ForkyError('UNAVAILABLE', `no cluster found: no --server, no FORKY_SERVER, and no ${clusterFile(data)}`);
  const authFile = env('FORKY_NATS_AUTH_FILE') ?? local?.authFile;
  const caFile = env('FORKY_NATS_CA') ?? local?.caFile;
  return { server: s, ...(authFile ? { authFile } : {}), ...(caFile ? { caFile } : {}) };
}

export async function connectTo(c: Connection): Promise<NatsConnection> {
  try {
    return await connectBus({
      servers: c.server,
      name: 'forky-cli',
      timeoutMs: 5000,
      ...(c.authFile ? { authFile: c.authFile } : {}),
      ...(c.caFile ? { tls: { caFile: c.caFile } } : {}),
    });
  } catch (e) {
    if (e instanceof ForkyError) throw e;
    throw new ForkyError('UNAVAILABLE', `cannot reach NATS at ${c.server}: ${(e as Error).message}`, { cause: e });
  }
}

export interface UpOptions {
  data: string;
  hosts: number;
  /** Users and permissions (default on); `false` runs an open server, as before issue 7. */
  auth?: boolean;
  /** TLS for client connections, with a self-signed certificate. */
  tls?: boolean;
}

/**
 * Starts what is missing of a local cluster (nats-server with JetStream, a scheduler, N hostd)
 * and leaves what runs alone; builds the guest image first if missing. Returns once the
 * scheduler answers and every host has reported in.
 */
export async function up(opts: UpOptions): Promise<ClusterFile> {
  const data = opts.data;
  const logs = path.join(data, 'logs');
  await fs.mkdir(logs, { recursive: true });
  const images = path.join(data, 'images');
  progress('building the guest image if missing…');
  await promisify(execFile)('bash', [path.join(IMAGE_RECIPES, 'tiny', 'build.sh'), images], { env: { ...process.env, FORKY_QUIET: '1' }, maxBuffer: 16 << 20 });

  const prev = await readCluster(data);
  const running = (prev?.processes ?? []).filter((p) => isAlive(p.pid));
  const procs: ClusterProcess[] = [...running];
  let server = prev?.server;
  const wanted = Array.from({ length: opts.hosts }, (_, i) => `host-${i + 1}`);
  const secure = opts.auth !== false || opts.tls === true;
  const { auth, changed } = secure ? await prepareLocalAuth(data, wanted, opts.tls === true) : { auth: undefined, changed: false };
  const natsRunning = running.find((p) => p.role === 'nats');
  // New hosts on a running server: it reloads its users on SIGHUP.
  if (natsRunning && changed) process.kill(natsRunning.pid, 'SIGHUP');

  if (!natsRunning) {
    progress('starting nats-server…');
    const log = path.join(logs, 'nats.log');
    const conf = auth ? ['-c', auth.serverConf] : [];
    const pid = spawnDetached('nats-server', [...conf, '-a', '127.0.0.1', '-p', '-1', '-js', '-sd', path.join(data, 'nats')], log);
    const m = await waitForLog(log, /Listening for client connections on [\d.]+:(\d+)[\s\S]*Server is ready/, pid, 15_000, 'nats-server start');
    server = `nats://127.0.0.1:${m[1]}`;
    procs.push({ role: 'nats', pid });
  }
  if (!server) throw new ForkyError('INTERNAL', 'nats-server runs but its address is unknown; run `forky down` first');

  const env = {
    ...process.env,
    FORKY_NATS_URL: server,
    FORKY_LOG_LEVEL: process.env.FORKY_LOG_LEVEL ?? 'info',
    ...(auth?.caFile ? { FORKY_NATS_CA: auth.caFile } : {}),
  };
  if (!running.some((p) => p.role === 'scheduler')) {
    progress('starting the scheduler…');
    const schedEnv = { ...env, ...(auth ? { FORKY_NATS_AUTH_FILE: auth.schedulerFile } : {}) };
    procs.push({ role: 'scheduler', pid: spawnDetached(process.execPath, [SCHEDULER_MAIN], path.join(logs, 'scheduler.log'), schedEnv) });
  }
  const ramRoot = ramRootOf(data);
  for (const host of wanted) {
    if (running.some((p) => p.role === 'hostd' && p.host === host)) continue;
    progress(`starting hostd ${host}…`);
    const hostEnv = {
      ...env,
      FORKY_HOST_ID: host,
      FORKY_DATA_DIR: path.join(data, 'hosts', host),
      FORKY_RAM_DIR: path.join(ramRoot, host),
      FORKY_IMAGES_DIR: images,
      FORKY_PROBE_CACHE: path.join(data, 'accel-probe.json'),
      ...(auth ? { FORKY_NATS_AUTH_FILE: auth.hostFile(host) } : {}),
    };
    procs.push({ role: 'hostd', pid: spawnDetached(process.execPath, [HOSTD_MAIN], path.join(logs, `hostd-${host}.log`), hostEnv), host });
  }
  const cluster: ClusterFile = {
    server,
    processes: procs,
    ...(auth ? { authFile: auth.operatorFile } : {}),
    ...(auth?.caFile ? { caFile: auth.caFile } : {}),
  };
  await fs.writeFile(clusterFile(data), JSON.stringify(cluster, null, 2));

  progress('waiting for every host to report in…');
  const nc = await connectTo(cluster);
  try {
    const sched = new SchedulerClient(nc, { timeoutMs: 5000 });
    const deadline = Date.now() + 90_000;
    for (;;) {
      const hosts = await sched.call('hosts', {}).catch(() => undefined);
      const alive = new Set(hosts?.hosts.filter((h) => h.alive).map((h) => h.id));
      if (wanted.every((h) => alive.has(h))) break;
      const dead = procs.filter((p) => !isAlive(p.pid));
      if (dead.length > 0) throw new ForkyError('INTERNAL', `${dead.map((p) => p.host ?? p.role).join(', ')} exited during start; see ${logs}`);
      if (Date.now() > deadline) throw new ForkyError('TIMEOUT', `hosts did not report in within 90 s (have: ${[...alive].join(', ') || 'none'}); see ${logs}`);
      await delay(200);
    }
  } finally {
    await nc.close();
  }
  return cluster;
}

/** Destroys every VM and snapshot of the cluster's hosts, then stops its processes. */
export async function down(data: string): Promise<ClusterFile | undefined> {
  const cluster = await readCluster(data);
  if (!cluster) return undefined;
  const hosts = cluster.processes.filter((p) => p.role === 'hostd' && isAlive(p.pid));
  if (hosts.length > 0) {
    const nc = await connectTo(cluster).catch(() => undefined);
    if (nc) {
      for (const p of hosts) {
        const c = new HostdClient(nc, p.host as string, { timeoutMs: 60_000 });
        const vms = await c.call('vm.list', {}).catch(() => ({ vms: [] }));
        await Promise.all(vms.vms.map((v) => c.call('vm.destroy', { id: v.id }).catch(() => undefined)));
        const snaps = await c.call('snapshot.list', {}).catch(() => ({ snapshots: [] }));
        for (const s of [...snaps.snapshots].reverse()) await c.call('snapshot.delete', { id: s.id }).catch(() => undefined);
      }
      await nc.close();
    }
  }
  const order: ClusterProcess['role'][] = ['hostd', 'scheduler', 'nats'];
  for (const role of order) await Promise.all(cluster.processes.filter((p) => p.role === role).map((p) => stopProcess(p.pid)));
  await fs.rm(clusterFile(data), { force: true });
  await fs.rm(ramRootOf(data), { recursive: true, force: true });
  return cluster;
}

export async function status(data: string): Promise<{ server: string | null; processes: ClusterProcess[] }> {
  const cluster = await readCluster(data);
  return { server: cluster?.server ?? null, processes: (cluster?.processes ?? []).filter((p) => isAlive(p.pid)) };
}
