import { createHash } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { CapacityError, ForkyError, NotFoundError, asForkyError, newId, type ErrorCode, type Logger } from '@forky/base';
import { HostdClient, callerDeadline, retryTransient, type Buckets, type JobDelivery, type JobOutcome, type JobQueue } from '@forky/bus';
import { LineageNode, schedContract, type Heartbeat, type Job, type JobEndpoint, type SchedParsedRequestOf, type SnapshotDeleteResult, type SnapshotTree } from '@forky/contract';
import type {
  BatchRequest,
  BatchResult,
  ExecRequest,
  VmAppRequest,
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
import { Idempotency, keyReused, requestHash, underWay } from './idempotency.js';
import type { HostView } from './host-view.js';
import { beatStatus, pickHost } from './placement.js';
import { lineageNodes, locatorHost } from './directory-reads.js';
import { StartByClient, failUnrun, hostGone, jobRefusal, mayStillStart, startWindowMs } from './deadlines.js';

export interface SchedulerOptions {
  /** How long a forwarded request may take on its host (a fork of many children is long). */
  hostTimeoutMs: number;
  leaseMs: number;
  /** Assumed cost of one forked child when placing (hostd checks for real). */
  childCostMiB: number;
}

/**
 * Stateless: what hosts there are comes from their heartbeats, where a VM lives from the locator
 * bucket, what a keyed request already did from the requests bucket, and the keyed requests not yet
 * done wait in the jobs stream. Any number of schedulers can run; one dying loses only keyless
 * requests in flight: its jobs go to another scheduler, which finishes them under the same keys.
 */
export class Scheduler {
  readonly #idem: Idempotency;
  readonly #log: Logger;

  constructor(
    private readonly nc: NatsConnection,
    private readonly buckets: Buckets,
    /** Heartbeats, followed on their subjects (seeded from the hosts bucket). */
    private readonly view: HostView<Heartbeat>,
    /** Keyed requests go through it, so they outlive the scheduler that took them. */
    private readonly jobs: JobQueue,
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
   * Rejects once `host` stops reporting (misses three heartbeats) or reports as a new process: a
   * request in flight to a host that died would otherwise wait for its whole deadline, and one to
   * a host that restarted would never be answered (the new process re-adopts VMs, not requests).
   * A host that stopped reporting may only be stopped: it is given up once past `startBy()` (and
   * the clock skew allowed), when it refuses what it was sent, however late it reads it.
   */
  #whenDown(host: string, signal: AbortSignal, startBy: () => number): Promise<never> {
    const instance = this.view.get(host)?.instance;
    return new Promise((_, reject) => {
      const timer = setInterval(() => {
        const hb = this.view.get(host);
        if (!hb) return;
        const down = !beatStatus(hb, Date.now()).alive;
        if (!down && (!instance || hb.instance === instance)) return;
        if (down && (!instance || hb.instance === instance) && mayStillStart(startBy())) return;
        clearInterval(timer);
        reject(hostGone(host, hb.ts, down, startBy()));
      }, 500);
      signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    });
  }

  /** A call to a host that fails once the host is seen down and can no longer start it. */
  async #onHost<T>(host: string, fn: (c: HostdClient) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    const c = new StartByClient(this.nc, host, { timeoutMs: this.opts.hostTimeoutMs }, startWindowMs(this.view.get(host)?.intervalMs), ac.signal);
    try {
      return await Promise.race([fn(c), this.#whenDown(host, ac.signal, () => c.latestStartBy)]);
    } finally {
      ac.abort();
    }
  }

  /**
   * A keyless request runs here and now: it cannot be asked for again, so nothing of it is
   * recorded (a bad or hostile request leaves nothing behind); hostd still gets a fresh key, so
   * the scheduler's own retries to it stay deduplicated. A keyed one becomes a job (see #submit).
   */
  #once<E extends JobEndpoint, T>(endpoint: E, req: SchedParsedRequestOf<E>, precheck: () => Promise<unknown>, fn: (key: string) => Promise<T>): Promise<T> {
    if (!req.key) return fn(newId('req', 16));
    return this.#submit(endpoint, req as SchedParsedRequestOf<E> & { key: string }, precheck);
  }

  /**
   * Queues a keyed request on the jobs stream and waits for its outcome in the requests bucket.
   * Whichever scheduler takes the job runs it (the one answering may die; the job is not lost),
   * and a repeat of a finished request gets the recorded reply.
   */
  async #submit<T>(endpoint: JobEndpoint, req: Record<string, unknown> & { key: string }, precheck: () => Promise<unknown>): Promise<T> {
    const hash = requestHash(endpoint, req);
    // The job does not start past its client's deadline, and nobody waits for its outcome after it.
    const deadline = callerDeadline() ?? Date.now() + this.opts.hostTimeoutMs;
    const now = await this.#idem.peek(req.key);
    if (now && now.entry.hash !== hash) throw keyReused(req.key);
    if (now?.entry.state === 'done') return now.entry.reply as T;
    if (!now || !underWay(now.entry)) {
      // What can be refused at once is, before anything is queued or recorded.
      await precheck();
      const job: Job = { v: 1, endpoint, key: req.key, hash, request: req, submittedAt: new Date().toISOString() };
      await this.jobs.submit(job, `${req.key}@${now?.revision ?? 0}`, deadline);
    }
    return this.#idem.outcome<T>(req.key, hash, now?.revision ?? 0, Math.max(1, Math.min(this.opts.hostTimeoutMs, deadline - Date.now())));
  }

  /**
   * Runs one delivery of a job. A failure that a later attempt may not meet (a host down or not
   * answering) sends the job back to the queue, with a growing delay, until its last delivery.
   * One past its last run, or first taken after its client's deadline, is failed, not run.
   */
  async runJob(d: JobDelivery): Promise<JobOutcome> {
    const { job } = d;
    const log = this.#log.child({ job: job.key, endpoint: job.endpoint, attempt: d.attempt });
    const parsed = schedContract[job.endpoint].request.safeParse(job.request);
    if (!parsed.success || requestHash(job.endpoint, job.request) !== job.hash) return { ack: false, drop: 'request does not match its schema or hash' };
    const refusal = jobRefusal(d);
    if (refusal) return failUnrun(this.#idem, d, refusal, { waitMs: 2 * this.opts.leaseMs, startWindowMs: Math.max(0, ...this.view.values().map((b) => startWindowMs(b.intervalMs))) }, log);
    const retryLater = (e: ForkyError): boolean => !d.last && TRANSIENT.has(e.code);
    try {
      await this.#idem.run(job.key, job.hash, this.opts.hostTimeoutMs, () => this.#perform(job.endpoint, parsed.data, job.key, d.last), retryLater);
      log.info('job done');
      return { ack: true };
    } catch (e) {
      const fe = asForkyError(e);
      if (retryLater(fe)) {
        log.warn({ err: fe }, 'job failed for now; it goes back to the queue');
        return { ack: false, retryInMs: Math.min(30_000, 2_000 * 2 ** (d.attempt - 1)) };
      }
      // Recorded as failed (the client sees the error); the job itself is finished.
      log.warn({ err: fe }, 'job failed');
      return { ack: true };
    }
  }

  #perform(endpoint: JobEndpoint, req: unknown, key: string, last: boolean): Promise<unknown> {
    switch (endpoint) {
      case 'vm.boot':
        return this.#boot(req as SchedBootRequest, key);
      case 'snapshot.create':
        return this.#snapshot(req as SnapshotCreateRequest, key);
      case 'fork':
        return this.#fork(req as SchedForkRequest, key);
      case 'batch':
        return this.#batch(req as BatchRequest, key, last);
    }
  }

  boot(req: SchedBootRequest): Promise<VmInfo> {
    return this.#once('vm.boot', req, () => this.#bootHost(req), (key) => this.#boot(req, key));
  }

  async #bootHost(req: SchedBootRequest): Promise<string> {
    return pickHost(await this.hosts(), { memMiB: req.memMiB + 64, count: 1, gpus: req.gpus }, req.host);
  }

  async #boot(req: SchedBootRequest, key: string): Promise<VmInfo> {
    return this.#onHost(await this.#bootHost(req), (c) => c.call('vm.boot', { image: req.image, memMiB: req.memMiB, cpus: req.cpus, gpus: req.gpus, ...(req.apps ? { apps: req.apps } : {}), key }));
  }

  fork(req: SchedForkRequest): Promise<ForkResult> {
    return this.#once('fork', req, () => this.locate(req.source.startsWith('vm-') ? 'vm' : 'snap', req.source), (key) => this.#fork(req, key));
  }

  batch(req: BatchRequest): Promise<BatchResult> {
    return this.#once('batch', req, async () => undefined, (key) => this.#batch(req, key, true));
  }

  async #batch(req: BatchRequest, key: string, last: boolean): Promise<BatchResult> {
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
    // Items whose host went away are tried again with the job (the done ones are replayed by
    // their hosts under the same keys), unless this is its last attempt.
    const transient = results.filter((r) => !r.ok && TRANSIENT.has(r.error.code as ErrorCode)).length;
    if (transient > 0 && !last) throw new ForkyError('UNAVAILABLE', `${transient} of ${results.length} batch items failed on hosts that did not answer`);
    return { results };
  }

  snapshot(req: SnapshotCreateRequest): Promise<SnapshotInfo> {
    return this.#once('snapshot.create', req, () => this.locate('vm', req.vm), (key) => this.#snapshot(req, key));
  }

  async #snapshot(req: SnapshotCreateRequest, key: string): Promise<SnapshotInfo> {
    return this.#onHost(await this.locate('vm', req.vm), (c) => c.call('snapshot.create', { vm: req.vm, resume: req.resume, key }));
  }

  /** The lineage of every snapshot, as hosts recorded it in JetStream. */
  async tree(): Promise<SnapshotTree> {
    // Read whole again if the cluster fails over half-way (a read is safe to repeat).
    const nodes = await retryTransient('lineage read', () => lineageNodes(this.buckets.lineage, this.#log), { log: this.#log });
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
  async forward<E extends 'vm.show' | 'vm.pause' | 'vm.resume' | 'vm.destroy' | 'vm.exec' | 'vm.app' | 'snapshot.show'>(
    endpoint: E,
    req: E extends 'vm.exec' ? ExecRequest : E extends 'vm.app' ? VmAppRequest : { id: string },
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
    // An entry that is not valid (any host may write the locator) is as good as none.
    const e = await retryTransient('locator get', () => this.buckets.locator.get(`${kind}.${id}`), { log: this.#log });
    const host = locatorHost(e, this.#log);
    if (!host) throw new NotFoundError(kind === 'vm' ? 'VM' : 'snapshot', id);
    return host;
  }

  async #fork(req: Omit<SchedForkRequest, 'key'>, key: string): Promise<ForkResult> {
    const started = performance.now();
    const kind = req.source.startsWith('vm-') ? 'vm' : 'snap';
    const home = await this.locate(kind, req.source);
    const hosts = await this.hosts();
    const plan = placeChildren(hosts, home, req.count, this.opts.childCostMiB, req);
    if (plan.size === 1 && plan.has(home)) {
      // Everything at home: hostd snapshots a VM source itself.
      return this.#onHost(home, (c) => c.call('fork', { source: req.source, count: req.count, resumeParent: req.resumeParent, until: req.until, ...(req.apps ? { apps: req.apps } : {}), key }));
    }
    // Children elsewhere: freeze once at home, ship the snapshot, fork it on every target.
    const snapshot =
      kind === 'vm'
        ? await this.#onHost(home, (c) => c.call('snapshot.create', { vm: req.source, resume: req.resumeParent, key: subKey(key, 'snapshot') }))
        : await this.#onHost(home, (c) => c.call('snapshot.show', { id: req.source }));
    const snapshotMs = performance.now() - started;
    // Published once, up front; each target then fetches what it lacks and forks, in parallel.
    const transfers: TransferResult[] = [await this.#onHost(home, (c) => c.call('snapshot.publish', { id: snapshot.id }))];
    const forkOn = (host: string, count: number, attempt: number): Promise<ForkResult> =>
      this.#onHost(host, async (c) => {
        if (host !== home) transfers.push(await c.call('snapshot.fetch', { id: snapshot.id }));
        return c.call('fork', { source: snapshot.id, count, until: req.until, ...(req.apps ? { apps: req.apps } : {}), key: subKey(key, `${host}/${attempt}`) });
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

/** Failures a later attempt may not meet: a host down, or not answering in time. */
const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['UNAVAILABLE', 'TIMEOUT']);

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
