import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import {
  HostdClient,
  SchedulerClient,
  inboxPrefixOf,
  newClusterAuth,
  startNatsServer,
  type ClusterAuth,
  type NatsServer,
} from '@forky/bus';
import { fileTree } from './files.js';
import { qemuPidsWhere } from './procs.js';
import { RawNats } from './raw-nats.js';
import { HOSTD_MAIN, SCHEDULER_MAIN, hostdEnv, spawnService, type ServiceProc } from './service-proc.js';

/**
 * The cluster the fuzz test attacks: nats-server with users, a hostd and schedulers as their own
 * processes with their own credentials (so a crash is an exit that is counted, not a dead test
 * runner), the operator's connection (and a raw one) to send from, and a second host's
 * credentials for a host gone rogue.
 */
export class FuzzCluster {
  readonly procs: ServiceProc[] = [];
  /** Processes the test stopped itself: their exit is no crash. */
  readonly #stopped = new Set<ServiceProc>();

  private constructor(
    readonly dir: string,
    readonly auth: ClusterAuth,
    readonly nats: NatsServer,
    readonly op: NatsConnection,
    readonly raw: RawNats,
    readonly hostId: string,
    readonly rogueId: string,
    readonly host: HostdClient,
    readonly sched: SchedulerClient,
  ) {}

  static async start(hostId: string, rogueId: string, opts: { dryRun: boolean }): Promise<FuzzCluster> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-fuzz-'));
    await fs.chmod(dir, 0o711);
    const auth = newClusterAuth([hostId, rogueId]);
    const nats = await startNatsServer({ auth });
    const op = await connect({
      servers: nats.url,
      user: auth.operator.user,
      pass: auth.operator.pass,
      inboxPrefix: inboxPrefixOf(auth.operator.user),
    });
    const c = new FuzzCluster(
      dir,
      auth,
      nats,
      op,
      await RawNats.connect(nats.port, auth.operator),
      hostId,
      rogueId,
      new HostdClient(op, hostId, { timeoutMs: 120_000 }),
      new SchedulerClient(op, { timeoutMs: 120_000 }),
    );
    const config = path.join(dir, 'hostd.json');
    await fs.writeFile(config, JSON.stringify(opts.dryRun ? { dryRun: true, pool: { size: 0 } } : {}));
    const creds = auth.hosts[hostId] as { user: string; pass: string };
    const env = {
      ...hostdEnv({ hostId, natsUrl: nats.url, dataDir: c.dataDir, ramDir: c.ramDir }),
      FORKY_HOSTD_CONFIG: config,
      FORKY_NATS_USER: creds.user,
      FORKY_NATS_PASS: creds.pass,
    };
    c.procs.push(
      await spawnService(HOSTD_MAIN, env, path.join(dir, 'hostd.log'), () =>
        c.host.call('host.info', {}, { timeoutMs: 1000 }).then(
          () => true,
          () => false,
        ),
      ),
    );
    await c.startScheduler('sched-a');
    return c;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get ramDir(): string {
    return path.join('/dev/shm', path.basename(this.dir));
  }

  /** A scheduler process; serving once it sees the host alive. */
  async startScheduler(name: string): Promise<ServiceProc> {
    const env = {
      FORKY_NATS_URL: this.nats.url,
      FORKY_NATS_USER: this.auth.scheduler.user,
      FORKY_NATS_PASS: this.auth.scheduler.pass,
      FORKY_LOG_LEVEL: 'info',
    };
    const probe = new SchedulerClient(this.op, { timeoutMs: 1000 });
    const p = await spawnService(SCHEDULER_MAIN, env, path.join(this.dir, `${name}.log`), () =>
      probe.call('hosts', {}).then(
        (r) => r.hosts.some((h) => h.id === this.hostId && h.alive),
        () => false,
      ),
    );
    this.procs.push(p);
    return p;
  }

  /** Stops a process the way an operator would (SIGTERM): not a crash. */
  async stop(p: ServiceProc): Promise<void> {
    this.#stopped.add(p);
    await p.kill('SIGTERM');
  }

  /** Service processes that exited without being told to. */
  crashes(): number {
    return this.procs.filter((p) => !this.#stopped.has(p) && (p.child.exitCode !== null || p.child.signalCode !== null)).length;
  }

  /** The keys of a bucket, sorted. */
  async keys(bucket: string): Promise<string[]> {
    const out: string[] = [];
    for await (const k of await (await new Kvm(this.op).open(bucket)).keys()) out.push(k);
    return out.sort();
  }

  /** Every file under the host's data and RAM directories. */
  async files(): Promise<string[]> {
    return [...(await fileTree(this.dataDir)), ...(await fileTree(this.ramDir))];
  }

  async close(): Promise<void> {
    for (const p of [...this.procs].reverse()) await p.kill().catch(() => undefined);
    for (const pid of await qemuPidsWhere((cmd) => cmd.includes(this.dir))) process.kill(pid, 'SIGKILL');
    this.raw.close();
    await this.op.close();
    await this.nats.stop();
    await fs.rm(this.dir, { recursive: true, force: true });
    await fs.rm(this.ramDir, { recursive: true, force: true });
  }
}
