import fs from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ForkyError, delay } from '@forky/base';
import { HostdClient, SchedulerClient } from '@forky/bus';
import { clusterFile, connectTo, readCluster, type ClusterFile } from '@forky/sdk';
import { prepareLocalAuth } from './local-auth.js';
import { recordedPort, startLocalNats, writeNatsConf } from './local-nats.js';
import { HOSTD_MAIN, IMAGE_RECIPES, SCHEDULER_MAIN } from './paths.js';
import { isAlive } from './pids.js';
import { spawnDetached, stopProcess } from './procs.js';
import { progress } from './output.js';
import { findClusterQemu, killQemu, removeRamDir, type ClusterQemu } from './vm-sweep.js';
import type { ClusterProcess } from './local-status.js';

export { connectTo, readCluster, resolveConnection, type ClusterFile, type Connection } from '@forky/sdk';
export { status, type ClusterProcess } from './local-status.js';

/** The tmpfs directory for this cluster's VM memory, one per data directory. */
const ramRootOf = (data: string): string => path.join('/dev/shm', `forky-${createHash('sha256').update(data).digest('hex').slice(0, 8)}`);

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
  await promisify(execFile)('bash', [path.join(IMAGE_RECIPES, 'tiny', 'build.sh'), images], {
    env: { ...process.env, FORKY_QUIET: '1' },
    maxBuffer: 16 << 20,
  });

  const prev = await readCluster(data);
  const running = (prev?.processes ?? []).filter((p) => isAlive(p.pid));
  const procs: ClusterProcess[] = [...running];
  let server = prev?.server;
  const wanted = Array.from({ length: opts.hosts }, (_, i) => `host-${i + 1}`);
  const secure = opts.auth !== false || opts.tls === true;
  const { auth, changed } = secure ? await prepareLocalAuth(data, wanted, opts.tls === true) : { auth: undefined, changed: false };
  const natsRunning = running.find((p) => p.role === 'nats');
  const port = (await recordedPort(data)) ?? (server ? Number(new URL(server).port) : undefined);
  if (natsRunning && port) {
    // New hosts on a running server: it reloads the config (users; the rest unchanged) on SIGHUP.
    if ((await writeNatsConf(data, auth, port)) || changed) process.kill(natsRunning.pid, 'SIGHUP');
    server = `nats://127.0.0.1:${port}`;
  }
  if (!natsRunning) {
    progress('starting nats-server…');
    const nats = await startLocalNats(data, auth, port, running.length > 0);
    server = `nats://127.0.0.1:${nats.port}`;
    procs.push({ role: 'nats', pid: nats.pid });
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
    procs.push({
      role: 'scheduler',
      pid: spawnDetached('the scheduler', process.execPath, [SCHEDULER_MAIN], path.join(logs, 'scheduler.log'), schedEnv).pid,
    });
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
    procs.push({
      role: 'hostd',
      pid: spawnDetached(`hostd ${host}`, process.execPath, [HOSTD_MAIN], path.join(logs, `hostd-${host}.log`), hostEnv).pid,
      host,
    });
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
      if (dead.length > 0)
        throw new ForkyError('INTERNAL', `${dead.map((p) => p.host ?? p.role).join(', ')} exited during start; see ${logs}`);
      if (Date.now() > deadline)
        throw new ForkyError('TIMEOUT', `hosts did not report in within 90 s (have: ${[...alive].join(', ') || 'none'}); see ${logs}`);
      await delay(200);
    }
  } finally {
    await nc.close();
  }
  return cluster;
}

/** What `forky down` did. */
export interface DownReport {
  /** The cluster's processes (nats-server, scheduler, hostd), now stopped. */
  stopped: ClusterProcess[];
  /** VMs hostd destroyed when asked. */
  destroyed: string[];
  /** QEMU processes of this data directory that no hostd stopped (it was gone or failed), killed by `down` itself. */
  killed: ClusterQemu[];
  ramDir: string;
  ramFilesRemoved: number;
}

/**
 * Destroys every VM and snapshot through the cluster's hosts, stops its processes, then kills any
 * QEMU of this data directory still running (hostd was dead, or failed to destroy it) and removes
 * the RAM directory: no VM of the data directory outlives `down`. Fails, keeping cluster.json,
 * if something could not be stopped. Undefined when there was nothing to do.
 */
export async function down(data: string): Promise<DownReport | undefined> {
  const cluster = await readCluster(data);
  const destroyed: string[] = [];
  const hosts = (cluster?.processes ?? []).filter((p) => p.role === 'hostd' && isAlive(p.pid));
  const nc = cluster && hosts.length > 0 ? await connectTo(cluster).catch(() => undefined) : undefined;
  if (nc) {
    for (const p of hosts) {
      const c = new HostdClient(nc, p.host as string, { timeoutMs: 60_000 });
      // A list answers at once from a live hostd; a hung one is dealt with below.
      const vms = await c.call('vm.list', {}, { timeoutMs: 10_000 }).catch(() => ({ vms: [] }));
      await Promise.all(
        vms.vms.map((v) =>
          c.call('vm.destroy', { id: v.id }).then(
            () => destroyed.push(v.id),
            () => undefined,
          ),
        ),
      );
      const snaps = await c.call('snapshot.list', {}, { timeoutMs: 10_000 }).catch(() => ({ snapshots: [] }));
      for (const s of [...snaps.snapshots].reverse()) await c.call('snapshot.delete', { id: s.id }).catch(() => undefined);
    }
    await nc.close();
  }
  const failed: string[] = [];
  for (const role of ['hostd', 'scheduler', 'nats'] as const) {
    await Promise.all(
      (cluster?.processes ?? [])
        .filter((p) => p.role === role)
        .map(async (p) => {
          if (!(await stopProcess(p.pid))) failed.push(`${p.host ?? p.role} (pid ${p.pid})`);
        }),
    );
  }
  // After hostd is gone, so nothing starts a VM meanwhile.
  const ramDir = ramRootOf(data);
  const killed = await findClusterQemu([data, ramDir]);
  for (const f of await killQemu(killed)) failed.push(`QEMU pid ${f.pid}${f.vm ? ` (${f.vm})` : ''}: ${f.why}`);
  const ramFilesRemoved = await removeRamDir(ramDir);
  if (failed.length > 0)
    throw new ForkyError('INTERNAL', `could not stop ${failed.join(', ')}; run \`forky down\` again, or kill them by hand`, {
      details: { failed },
    });
  await fs.rm(clusterFile(data), { force: true });
  if (!cluster && killed.length === 0 && ramFilesRemoved === 0) return undefined;
  return { stopped: cluster?.processes ?? [], destroyed, killed, ramDir, ramFilesRemoved };
}

/** `down`'s report for people: one line. */
export function describeDown(r: DownReport | undefined): string {
  if (!r) return 'no cluster here\n';
  const parts = [`stopped ${r.stopped.length} processes`];
  if (r.destroyed.length > 0) parts.push(`destroyed ${r.destroyed.length} VMs through hostd`);
  if (r.killed.length > 0) {
    const vms = r.killed.map((k) => k.vm ?? `pid ${k.pid}`).join(', ');
    parts.push(`killed ${r.killed.length} QEMU process${r.killed.length === 1 ? '' : 'es'} no hostd stopped (${vms})`);
  }
  if (r.ramFilesRemoved > 0) parts.push(`removed ${r.ramFilesRemoved} RAM file${r.ramFilesRemoved === 1 ? '' : 's'} in ${r.ramDir}`);
  return `${parts.join('; ')}\n`;
}
