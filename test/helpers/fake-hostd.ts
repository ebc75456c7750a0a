import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { NotFoundError, newId } from '@forky/base';
import { openBuckets, startService, type Buckets } from '@forky/bus';
import {
  HOSTD_ENDPOINTS,
  hostdContract,
  subjects,
  type Heartbeat,
  type HostdEndpoint,
  type SnapshotInfo,
  type VmInfo,
} from '@forky/contract';
import { fakeBeat } from './fake-beat.js';
import { testLogger } from './hostd.js';

/** What a fetched copy's info is taken to be (the fake keeps no fetched metadata). */
const FETCHED: Omit<SnapshotInfo, 'id' | 'host' | 'createdAt'> = {
  image: 'tiny',
  vm: 'vm-000000000000',
  profile: { accel: 'tcg', qemuVersion: '7.2.0', machine: 'q35', cpuModel: 'max', cpus: 1, memMiB: 256, imageId: 'img-1' },
  sizes: { stateBytes: 1, ramBytes: 1, diskBytes: 1 },
};

type Req = Record<string, unknown> & { key?: string };
/** Runs before an endpoint's work (throw to fail it) or after it (delay to lose its reply to a short caller deadline). */
export type Hook = (req: Req) => Promise<void> | void;

/**
 * A hostd of our own for scheduler logic: VMs and snapshots as records, the real wire contract
 * (its replies are parsed by the real clients), keyed calls deduped like hostd's, heartbeats on
 * the real subject and bucket, locator entries for what it makes. `before`/`after` hooks inject
 * faults per endpoint; `calls` is every request it took.
 */
export class FakeHostd {
  readonly vms = new Map<string, VmInfo>();
  readonly snaps = new Map<string, SnapshotInfo>();
  readonly calls: Array<{ endpoint: string; req: Req }> = [];
  readonly before: Partial<Record<HostdEndpoint, Hook>> = {};
  readonly after: Partial<Record<HostdEndpoint, Hook>> = {};
  /** Snapshots held without being their home (fetched copies): listed in heartbeats. */
  readonly copies = new Set<string>();
  images = ['tiny', 'debian'];
  memFreeMiB = 8192;
  /** What a guest command returns (default: exit 0). */
  exec: (cmd: string) => { exitCode: number; stdout: string; stderr: string } = () => ({ exitCode: 0, stdout: '', stderr: '' });
  #keys = new Map<string, Promise<unknown>>();
  #svc: Service | undefined;
  #beat: ReturnType<typeof setInterval> | undefined;
  #buckets!: Buckets;

  private constructor(
    private readonly nc: NatsConnection,
    readonly id: string,
  ) {}

  static async start(nc: NatsConnection, id: string): Promise<FakeHostd> {
    const h = new FakeHostd(nc, id);
    h.#buckets = await openBuckets(nc);
    await h.up();
    return h;
  }

  /** Answers and beats (again, after `down`), with what it held. */
  async up(): Promise<void> {
    const endpoints = HOSTD_ENDPOINTS.map((e) => ({
      name: e.replace('.', '_'),
      subject: subjects.host(this.id, e),
      request: hostdContract[e].request,
      reply: hostdContract[e].reply,
      handler: (req: unknown) => this.#handle(e, req as Req),
    }));
    const def = { name: `fake-hostd-${this.id}`, version: '0.0.0', description: 'fake', queue: '' };
    this.#svc = await startService(this.nc, def, endpoints, testLogger());
    await this.beat();
    this.#beat = setInterval(() => void this.beat().catch(() => undefined), 1_000);
  }

  /** Sends one heartbeat now (also every second until `down`). */
  async beat(): Promise<void> {
    const hb: Heartbeat = fakeBeat(this.id, {
      memFreeMiB: this.memFreeMiB,
      vms: this.vms.size,
      snapshots: this.snaps.size,
      images: this.images,
      instance: `fake-${this.id}`,
      vmList: [...this.vms.values()],
      snapshotIds: [...this.snaps.keys(), ...this.copies],
    });
    const body = JSON.stringify(hb);
    this.nc.publish(subjects.heartbeat(this.id), body);
    await this.#buckets.hosts.put(this.id, body);
  }

  /** Stops beating but goes on answering: a host too busy to beat on time. */
  quiet(): void {
    clearInterval(this.#beat);
  }

  /** Stops beating and answering: the host is down (its last heartbeat stays in the bucket). */
  async down(): Promise<void> {
    clearInterval(this.#beat);
    await this.#svc?.stop();
    this.#svc = undefined;
  }

  count(endpoint: string): number {
    return this.calls.filter((c) => c.endpoint === endpoint).length;
  }

  async #handle(e: HostdEndpoint, req: Req): Promise<unknown> {
    this.calls.push({ endpoint: e, req });
    await this.before[e]?.(req);
    // Like hostd: the key is forgotten (what it made is not undone here: the fake keeps no owner).
    if (e === 'fork.abandon') {
      const had = this.#keys.has(req.key as string);
      this.#keys.delete(req.key as string);
      return { found: had ? 'running' : 'none', destroyed: [] };
    }
    let p = req.key ? this.#keys.get(req.key) : undefined;
    if (!p) {
      p = this.#do(e, req);
      const key = req.key;
      // Like hostd: a keyed call's outcome is kept; a failed one may be tried again under its key.
      if (key) {
        this.#keys.set(key, p);
        p.catch(() => this.#keys.delete(key));
      }
    }
    const out = await p;
    await this.after[e]?.(req);
    return out;
  }

  async #do(e: HostdEndpoint, req: Req): Promise<unknown> {
    const now = new Date().toISOString();
    switch (e) {
      case 'host.ping':
        return { instance: `fake-${this.id}` };
      case 'vm.boot': {
        const vm: VmInfo = {
          id: newId('vm'),
          host: this.id,
          state: 'running',
          image: req['image'] as string,
          memMiB: req['memMiB'] as number,
          cpus: req['cpus'] as number,
          accel: 'tcg',
          createdAt: now,
        };
        this.vms.set(vm.id, vm);
        await this.#buckets.locator.put(`vm.${vm.id}`, JSON.stringify({ host: this.id }));
        return vm;
      }
      case 'vm.exec':
        this.vm(req['id'] as string);
        return this.exec((req['cmd'] as string[]).at(-1) as string);
      case 'vm.destroy': {
        const vm = this.vm(req['id'] as string);
        this.vms.delete(vm.id);
        await this.#buckets.locator.delete(`vm.${vm.id}`);
        return { ...vm, state: 'destroyed' };
      }
      case 'snapshot.create': {
        const vm = this.vm(req['vm'] as string);
        const s: SnapshotInfo = {
          id: newId('snap'),
          host: this.id,
          image: vm.image,
          vm: vm.id,
          profile: {
            accel: 'tcg',
            qemuVersion: '7.2.0',
            machine: 'q35',
            cpuModel: 'max',
            cpus: vm.cpus,
            memMiB: vm.memMiB,
            imageId: 'img-1',
          },
          createdAt: now,
          sizes: { stateBytes: 1, ramBytes: 1, diskBytes: 1 },
        };
        this.snaps.set(s.id, s);
        await this.#buckets.locator.put(`snap.${s.id}`, JSON.stringify({ host: this.id }));
        return s;
      }
      case 'snapshot.show':
        return this.snap(req['id'] as string);
      case 'snapshot.delete': {
        const id = req['id'] as string;
        if (this.copies.delete(id)) return { snapshots: [id], vms: [] };
        const s = this.snap(id);
        this.snaps.delete(s.id);
        await this.#buckets.locator.delete(`snap.${s.id}`);
        return { snapshots: [s.id], vms: [] };
      }
      case 'snapshot.publish':
      case 'snapshot.fetch':
        if (e === 'snapshot.fetch') this.copies.add(req['id'] as string);
        return { id: req['id'], host: this.id, parts: 1, moved: 0, bytes: 0, nominalBytes: 0, ms: 0 };
      case 'fork': {
        const source = req['source'] as string;
        if (!this.snaps.has(source) && !this.copies.has(source)) throw new NotFoundError('snapshot', source);
        const s = this.snaps.get(source);
        const egress = (req['network'] as { egress?: unknown } | undefined)?.egress;
        const child: VmInfo = {
          id: newId('vm'),
          host: this.id,
          state: 'running',
          image: s?.image ?? 'tiny',
          memMiB: 256,
          cpus: 1,
          accel: 'tcg',
          parentSnapshot: source,
          createdAt: now,
          ...(req['labels'] ? { labels: req['labels'] as Record<string, string> } : {}),
          ...(egress ? { network: { egress, enforcedBy: 'nftables' } } : {}),
        } as VmInfo;
        this.vms.set(child.id, child);
        const info = s ?? { ...FETCHED, id: source, host: this.id, createdAt: now };
        return { snapshot: info, children: [child], timings: { snapshotMs: 0, totalMs: 0, childMs: [0] } };
      }
      default:
        throw new NotFoundError('endpoint on the fake hostd', e);
    }
  }

  vm(id: string): VmInfo {
    const v = this.vms.get(id);
    if (!v) throw new NotFoundError('VM', id);
    return v;
  }

  snap(id: string): SnapshotInfo {
    const s = this.snaps.get(id);
    if (!s) throw new NotFoundError('snapshot', id);
    return s;
  }
}
