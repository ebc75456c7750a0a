import { createHash } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { NotFoundError, ForkyError, asForkyError, newId, type Logger } from '@forky/base';
import { HostdClient, type Buckets } from '@forky/bus';
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
  VmInfo,
} from '@forky/contract';
import { Idempotency, requestHash } from './idempotency.js';
import { hostStatus, pickHost } from './placement.js';

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
    private readonly opts: SchedulerOptions,
    logger: Logger,
  ) {
    this.#log = logger.child({ component: 'scheduler' });
    // The owner names the process, so an operator (or a test) can tell whose lease a request holds.
    this.#idem = new Idempotency(buckets.requests, `${newId('sch', 6)}-pid${process.pid}`, opts.leaseMs, this.#log);
  }

  async hosts(): Promise<HostStatus[]> {
    const now = Date.now();
    const out: HostStatus[] = [];
    for await (const key of await this.buckets.hosts.keys()) {
      const e = await this.buckets.hosts.get(key);
      if (e?.operation !== 'PUT') continue;
      const s = hostStatus(safeJson(e.string()), now);
      if (s) out.push(s);
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  boot(req: SchedBootRequest): Promise<VmInfo> {
    const key = req.key ?? newId('req', 16);
    return this.#idem.run(key, requestHash('boot', req), this.opts.hostTimeoutMs, async () => {
      const host = pickHost(await this.hosts(), { memMiB: req.memMiB + 64, count: 1 }, req.host);
      return this.#host(host).call('vm.boot', { image: req.image, memMiB: req.memMiB, cpus: req.cpus, key });
    });
  }

  fork(req: SchedForkRequest): Promise<ForkResult> {
    const key = req.key ?? newId('req', 16);
    return this.#idem.run(key, requestHash('fork', req), this.opts.hostTimeoutMs, () => this.#fork(req, key));
  }

  batch(req: BatchRequest): Promise<BatchResult> {
    const key = req.key ?? newId('req', 16);
    return this.#idem.run(key, requestHash('batch', req), this.opts.hostTimeoutMs, async () => {
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
    const key = req.key ?? newId('req', 16);
    return this.#idem.run(key, requestHash('snapshot', req), this.opts.hostTimeoutMs, async () =>
      this.#host(await this.locate('vm', req.vm)).call('snapshot.create', { vm: req.vm, resume: req.resume, key }),
    );
  }

  /** Forwards a request about one VM or snapshot to the host that holds it. */
  async forward<E extends 'vm.show' | 'vm.pause' | 'vm.resume' | 'vm.destroy' | 'vm.exec' | 'snapshot.show' | 'snapshot.delete'>(
    endpoint: E,
    req: E extends 'vm.exec' ? ExecRequest : { id: string },
  ): Promise<unknown> {
    const kind = endpoint.startsWith('vm.') ? 'vm' : 'snap';
    const host = await this.locate(kind, req.id);
    return this.#host(host).call(endpoint as HostdEndpoint, req as never);
  }

  /** Every live host's VMs (or snapshots); a host that does not answer is left out and logged. */
  async gather<E extends 'vm.list' | 'snapshot.list'>(endpoint: E): Promise<unknown[]> {
    const live = (await this.hosts()).filter((h) => h.alive);
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
    return lists.flat();
  }

  async locate(kind: 'vm' | 'snap', id: string): Promise<string> {
    const e = await this.buckets.locator.get(`${kind}.${id}`);
    if (e?.operation !== 'PUT') throw new NotFoundError(kind === 'vm' ? 'VM' : 'snapshot', id);
    return (e.json<{ host: string }>()).host;
  }

  async #fork(req: Omit<SchedForkRequest, 'key'>, key: string): Promise<ForkResult> {
    const kind = req.source.startsWith('vm-') ? 'vm' : 'snap';
    const home = await this.locate(kind, req.source);
    if (req.host && req.host !== home) {
      // Shipping a snapshot to another host is the multi-host work (JetStream object store).
      throw new ForkyError('UNAVAILABLE', `${req.source} is on host ${home}; forking it onto ${req.host} needs cross-host shipping, not available yet`, {
        details: { field: 'host' },
      });
    }
    pickHost(await this.hosts(), { memMiB: this.opts.childCostMiB, count: req.count }, home);
    return this.#host(home).call('fork', { source: req.source, count: req.count, resumeParent: req.resumeParent, key });
  }

  #host(id: string): HostdClient {
    return new HostdClient(this.nc, id, { timeoutMs: this.opts.hostTimeoutMs });
  }
}

/** A key per batch item, derived so that a retried batch reuses them. */
function subKey(key: string, i: number): string {
  return `b${createHash('sha256').update(`${key}/${i}`).digest('base64url').slice(0, 30)}`;
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}
