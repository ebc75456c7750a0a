import { createHash } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { CapacityError, ForkyError, NotFoundError, asForkyError, newId, type Logger } from '@forky/base';
import { HostdClient, type Buckets } from '@forky/bus';
import { LineageNode, type Heartbeat, type SnapshotDeleteResult, type SnapshotTree } from '@forky/contract';
import type {
  BatchRequest,
  BatchResult,
  ExecRequest,
  ForkResult,
  HostStatus,
  HostdEndpoint,
  SchedBootRequest,
  SchedForkRequest,
  SnapshotCreateRequest,
  SnapshotInfo,
  TransferResult,
  VmInfo,
} from '@forky/contract';
import { Idempotency, requestHash } from './idempotency.js';
import type { HostView } from './host-view.js';
import { beatStatus, pickHost } from './placement.js';

export interface SchedulerOptions {
  /** How long a forwarded request may take on its host (a fork of many children is long). */
  hostTimeoutMs: number;
  leaseMs: number;
  /** Assumed cost of one forked child when placing (hostd checks for real). */
  childCostMiB: number;
}

/**
 * Stateless: what hosts there are comes from their heartbeats, where a VM lives from the locator
 * bucket, what a request already did from the requests bucket. Any number of schedulers can run;
 * one dying loses nothing but the requests it was answering, which a retry under the same key finishes.
 */
export class Scheduler {
  readonly #idem: Idempotency;
  readonly #log: Logger;

  constructor(
    private readonly nc: NatsConnection,
    private readonly buckets: Buckets,
    /** Heartbeats, watched from the KV bucket. */
    private readonly view: HostView<Heartbeat>,
    private readonly opts: SchedulerOptions,
    logger: Logger,
  ) {
    this.#log = logger.child({ component: 'scheduler' });
    // The owner names the process, so an operator (or a test) can tell whose lease a request holds.
    this.#idem = new Idempotency(buckets.requests, `${newId('sch', 6)}-pid${process.pid}`, opts.leaseMs, this.#log);
  }

  async hosts(): Promise<HostStatus[]> {
    return (await this.#beats()).map((b) => b.status);
  }

  /** Every host's last heartbeat, with its liveness. */
  async #beats(): Promise<Array<{ status: HostStatus; vms: VmInfo[]; snapshotIds: string[] }>> {
    const now = Date.now();
    const out: Array<{ status: HostStatus; vms: VmInfo[]; snapshotIds: string[] }> = [];
    for (const hb of this.view.values()) out.push({ status: beatStatus(hb, now), vms: hb.vmList, snapshotIds: hb.snapshotIds });
    return out.sort((a, b) => a.status.id.localeCompare(b.status.id));
  }

  /**
   * Rejects once `host` stops reporting (misses three heartbeats): a request in flight to a host
   * that died would otherwise wait for its whole deadline.
   */
  #whenDown(host: string, signal: AbortSignal): Promise<never> {
    return new Promise((_, reject) => {
      const timer = setInterval(() => {
        void this.hosts().then((hs) => {
          const h = hs.find((x) => x.id === host);
          if (h && !h.alive) {
            clearInterval(timer);
            reject(new ForkyError('UNAVAILABLE', `host ${host} stopped reporting (last seen ${h.lastSeen})`, { details: { host } }));
          }
        }, () => undefined);
      }, 1000);
      signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    });
  }

  /** A call to a host that fails as soon as the host is seen down. */
  async #onHost<T>(host: string, fn: (c: HostdClient) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    try {
      return await Promise.race([fn(this.#host(host)), this.#whenDown(host, ac.signal)]);
    } finally {
      ac.abort();
    }
  }

  /**
   * Runs a request once per idempotency key. A request without a key cannot be sent again under
   * it, so it is not recorded (a bad or hostile request leaves nothing in the requests bucket);
   * hostd still gets a fresh key, so the scheduler's own retries to it stay deduplicated.
   */
  #once<T>(endpoint: string, req: { key?: string | undefined } & Record<string, unknown>, fn: (key: string) => Promise<T>): Promise<T> {
    if (!req.key) return fn(newId('req', 16));
    const key = req.key;
    return this.#idem.run(key, requestHash(endpoint, req), this.opts.hostTimeoutMs, () => fn(key));
  }

  boot(req: SchedBootRequest): Promise<VmInfo> {
    return this.#once('boot', req, async (key) => {
      const host = pickHost(await this.hosts(), { memMiB: req.memMiB + 64, count: 1 }, req.host);
      return this.#host(host).call('vm.boot', { image: req.image, memMiB: req.memMiB, cpus: req.cpus, key });
    });
  }

  fork(req: SchedForkRequest): Promise<ForkResult> {
    return this.#once('fork', req, (key) => this.#fork(req, key));
  }

  batch(req: BatchRequest): Promise<BatchResult> {
    return this.#once('batch', req, async (key) => {
      const results: BatchResult['results'] = [];
      // One item after another: each fork already runs its children in parallel on its host.
      for (const [i, item] of req.items.entries()) {
        try {
          results.push({ ok: true, result: await this.#fork(item, subKey(key, i)) });
        } catch (e) {
          const fe = asForkyError(e);
          results.push({ ok: false, error: { code: fe.code, message: fe.message } });
        }
      }
      return { results };
    });
  }

  snapshot(req: SnapshotCreateRequest): Promise<SnapshotInfo> {
    return this.#once('snapshot', req, async (key) =>
      this.#host(await this.locate('vm', req.vm)).call('snapshot.create', { vm: req.vm, resume: req.resume, key }),
    );
  }

  /** The lineage of every snapshot, as hosts recorded it in JetStream. */
  async tree(): Promise<SnapshotTree> {
    const nodes: LineageNode[] = [];
    for await (const key of await this.buckets.lineage.keys()) {
      const e = await this.buckets.lineage.get(key);
      if (e && e.operation === 'PUT') nodes.push(LineageNode.parse(e.json()));
    }
    nodes.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    return { nodes };
  }

  /**
   * Deletes a snapshot on every host that holds a copy (copies first, the origin last, which
   * retires it from the object store and the lineage). With `cascade`, the snapshots below it in
   * the lineage go first, leaves first, each with the VMs that depend on it.
   */
  async deleteSnapshot(id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
    await this.locate('snap', id);
    // Without cascade, each host refuses for what physically depends on the snapshot there.
    const below = cascade ? descendants((await this.tree()).nodes, id) : [];
    const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
    for (const s of [...below.reverse(), id]) {
      const home = await this.locate('snap', s).catch(() => undefined);
      if (!home) continue;
      const holders = (await this.#beats()).filter((b) => b.status.alive && b.status.id !== home && b.snapshotIds.includes(s)).map((b) => b.status.id);
      for (const h of [...holders, home]) {
        const r = await this.#host(h).call('snapshot.delete', { id: s, cascade });
        out.vms.push(...r.vms);
        if (h === home) out.snapshots.push(...r.snapshots.filter((x) => !out.snapshots.includes(x)));
      }
    }
    return out;
  }

  /** Forwards a request about one VM or snapshot to the host that holds it. */
  async forward<E extends 'vm.show' | 'vm.pause' | 'vm.resume' | 'vm.destroy' | 'vm.exec' | 'snapshot.show'>(
    endpoint: E,
    req: E extends 'vm.exec' ? ExecRequest : { id: string },
  ): Promise<unknown> {
    const kind = endpoint.startsWith('vm.') ? 'vm' : 'snap';
    const host = await this.locate(kind, req.id);
    return this.#host(host).call(endpoint as HostdEndpoint, req as never);
  }

  /** Every live host's VMs (or snapshots); a host that does not answer is left out and logged. */
  async gather<E extends 'vm.list' | 'snapshot.list'>(endpoint: E): Promise<unknown[]> {
    const beats = await this.#beats();
    const live = beats.map((b) => b.status).filter((h) => h.alive);
    // A down host's VMs are shown as lost (from its last heartbeat), not silently dropped.
    const lost = endpoint === 'vm.list' ? beats.filter((b) => !b.status.alive).flatMap((b) => b.vms.map((v) => ({ ...v, state: 'lost' as const }))) : [];
    const lists = await Promise.all(
      live.map(async (h) => {
        try {
          const c = this.#host(h.id);
          return endpoint === 'vm.list'
            ? (await c.call('vm.list', {}, { timeoutMs: 10_000 })).vms
            : (await c.call('snapshot.list', {}, { timeoutMs: 10_000 })).snapshots;
        } catch (err) {
          this.#log.warn({ err, host: h.id }, `${endpoint} failed on a host`);
          return [];
        }
      }),
    );
    return [...lists.flat(), ...lost];
  }

  async locate(kind: 'vm' | 'snap', id: string): Promise<string> {
    const e = await this.buckets.locator.get(`${kind}.${id}`);
    if (e?.operation !== 'PUT') throw new NotFoundError(kind === 'vm' ? 'VM' : 'snapshot', id);
    return (e.json<{ host: string }>()).host;
  }

  async #fork(req: Omit<SchedForkRequest, 'key'>, key: string): Promise<ForkResult> {
    const started = performance.now();
    const kind = req.source.startsWith('vm-') ? 'vm' : 'snap';
    const home = await this.locate(kind, req.source);
    const hosts = await this.hosts();
    const plan = placeChildren(hosts, home, req.count, this.opts.childCostMiB, req);
    if (plan.size === 1 && plan.has(home)) {
      // Everything at home: hostd snapshots a VM source itself.
      return this.#host(home).call('fork', { source: req.source, count: req.count, resumeParent: req.resumeParent, until: req.until, key });
    }
    // Children elsewhere: freeze once at home, ship the snapshot, fork it on every target.
    const snapshot =
      kind === 'vm'
        ? await this.#host(home).call('snapshot.create', { vm: req.source, resume: req.resumeParent, key: subKey(key, 'snapshot') })
        : await this.#host(home).call('snapshot.show', { id: req.source });
    const snapshotMs = performance.now() - started;
    // Published once, up front; each target then fetches what it lacks and forks, in parallel.
    const transfers: TransferResult[] = [await this.#host(home).call('snapshot.publish', { id: snapshot.id })];
    const forkOn = (host: string, count: number, attempt: number): Promise<ForkResult> =>
      this.#onHost(host, async (c) => {
        if (host !== home) transfers.push(await c.call('snapshot.fetch', { id: snapshot.id }));
        return c.call('fork', { source: snapshot.id, count, until: req.until, key: subKey(key, `${host}/${attempt}`) });
      });
    const results: ForkResult[] = [];
    let pending = [...plan.entries()];
    for (let attempt = 0; pending.length > 0; attempt++) {
      const settled = await Promise.allSettled(pending.map(([h, n]) => forkOn(h, n, attempt)));
      const failed: Array<[string, number]> = [];
      settled.forEach((r, i) => {
        const [h, n] = pending[i] as [string, number];
        if (r.status === 'fulfilled') results.push(r.value);
        else {
          this.#log.warn({ host: h, err: r.reason }, 'a host failed its share of a fork');
          failed.push([h, n]);
        }
      });
      if (failed.length === 0) break;
      const first = settled.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      const retryable = failed.every(([h]) => h !== home) && attempt < 2;
      if (!retryable) throw asForkyError(first.reason);
      // A host that failed (down, or gone mid-batch) has its share placed on the others.
      const down = new Set(failed.map(([h]) => h));
      const rest = (await this.hosts()).filter((h) => h.alive && !down.has(h.id));
      const again = new Map<string, number>();
      for (const [, n] of failed) for (const [h, m] of placeChildren(rest, home, n, this.opts.childCostMiB, { spread: true })) again.set(h, (again.get(h) ?? 0) + m);
      pending = [...again.entries()];
    }
    return {
      snapshot,
      children: results.flatMap((r) => r.children),
      transfers,
      timings: {
        snapshotMs: Math.round(snapshotMs * 10) / 10,
        totalMs: Math.round((performance.now() - started) * 10) / 10,
        childMs: results.flatMap((r) => r.timings.childMs),
      },
    };
  }

  #host(id: string): HostdClient {
    return new HostdClient(this.nc, id, { timeoutMs: this.opts.hostTimeoutMs });
  }
}

/**
 * Where the children of one fork go: all at home (locality: the snapshot is there), all on a
 * pinned host, or spread over the live hosts by free memory.
 */
export function placeChildren(
  hosts: readonly HostStatus[],
  home: string,
  count: number,
  childCostMiB: number,
  req: { host?: string; spread?: boolean },
): Map<string, number> {
  if (req.host) {
    pickHost(hosts, { memMiB: childCostMiB, count }, req.host);
    return new Map([[req.host, count]]);
  }
  if (!req.spread) {
    pickHost(hosts, { memMiB: childCostMiB, count }, home);
    return new Map([[home, count]]);
  }
  // A child costs what the host's children really cost (their median Pss), once it has any.
  const live = hosts.filter((h) => h.alive).map((h) => ({ id: h.id, free: h.memFreeMiB, cost: h.childPssMiB > 0 ? h.childPssMiB : childCostMiB }));
  if (live.length === 0) pickHost(hosts, { memMiB: childCostMiB, count });
  // Home first (its children need no transfer), then by free memory; round-robin over those with room.
  live.sort((a, b) => (a.id === home ? -1 : b.id === home ? 1 : b.free - a.free));
  const plan = new Map<string, number>();
  for (let i = 0, next = 0; i < count; i++) {
    const h = live.map((_, k) => live[(next + k) % live.length]).find((x) => x && x.free >= x.cost);
    if (!h) throw new CapacityError(`no room for ${count} children of ${childCostMiB} MiB across ${live.length} hosts`, { field: 'count' });
    plan.set(h.id, (plan.get(h.id) ?? 0) + 1);
 h.free -= h.cost;
    next = (live.indexOf(h) + 1) % live.length;
  }
  return plan;
}

/** A key per batch item (or per host of a fork), derived so that a retry reuses them. */
function subKey(key: string, i: number | string): string {
  return `b${createHash('sha256').update(`${key}/${i}`).digest('base64url').slice(0, 30)}`;
}

/** Snapshots below `id` in the lineage, breadth first (parents before their children). */
function descendants(nodes: readonly LineageNode[], id: string): string[] {
  const out: string[] = [];
  const queue = [id];
  while (queue.length > 0) {
    const at = queue.shift() as string;
    for (const n of nodes) {
      if (n.parent !== at || out.includes(n.id)) continue;
      out.push(n.id);
      queue.push(n.id);
    }
  }
  return out;
}
