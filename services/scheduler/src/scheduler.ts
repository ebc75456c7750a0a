import type { NatsConnection } from '@nats-io/nats-core';
import { ValidationError, type Logger } from '@forky/base';
import type { Buckets, JobDelivery, JobOutcome, JobQueue } from '@forky/bus';
import type {
  BatchRequest,
  BatchResult,
  ForkResult,
  HostStatus,
  SchedBootRequest,
  SchedForkRequest,
  SnapshotCreateRequest,
  SnapshotDeleteResult,
  SnapshotInfo,
  SnapshotTree,
  TemplateCreateRequest,
  TemplateDeleteResult,
  TemplateInfo,
  TemplateList,
  VmInfo,
  GuestEndpoint,
} from '@forky/contract';
import type { SchedContext } from './context.js';
import { locate, sourceKind, type Located } from './directory-reads.js';
import { batch, fork } from './fork.js';
import type { HostView } from './host-view.js';
import { Hosts, type Beat } from './hosts.js';
import { Jobs, type Perform } from './jobs.js';
import { deleteSnapshot, tree } from './lineage.js';
import { pickHost } from './placement.js';
import { forward, forwardGuest, gather, lifetimeOf, type Forwarded, type ForwardedRequest } from './routing.js';
import { bootFromTemplate, templateFor } from './template-boot.js';
import { createTemplate, pickBuildHost } from './template-create.js';
import { reapRetired, templateDelete, templateList, templateShow } from './templates.js';

export interface SchedulerOptions {
  /** How long a forwarded request may take on its host (a fork of many children is long). */
  hostTimeoutMs: number;
  /** A ping of a quiet host (host-probe.ts); default PROBE_TIMEOUT_MS. */
  hostProbeTimeoutMs?: number;
  leaseMs: number;
  /** Assumed cost of one forked child when placing (hostd checks for real). */
  childCostMiB: number;
  /** How often retired template snapshots are tried for deletion (also after each template create and delete). */
  templateReapMs?: number;
}

/**
 * The scheduler's one entry. Requests that change the cluster go through jobs.ts (a keyed one is
 * a job); a fork and a batch are fork.ts, the tree and deletes lineage.ts, requests about one VM
 * and listings routing.ts; a boot goes where placement.ts picks; every host call goes through
 * hosts.ts, which gives it up once its host is gone.
 *
 * Stateless: what hosts there are comes from their heartbeats, where a VM lives from the locator
 * bucket, what a keyed request already did from the requests bucket, and the keyed requests not yet
 * done wait in the jobs stream. Any number of schedulers can run; one dying loses only keyless
 * requests in flight: its jobs go to another scheduler, which finishes them under the same keys.
 */
export class Scheduler {
  readonly #ctx: SchedContext;
  readonly #jobs: Jobs;
  readonly #reaper: ReturnType<typeof setInterval>;
  #reaping: Promise<unknown> | undefined;

  constructor(
    nc: NatsConnection,
    buckets: Buckets,
    /** Heartbeats, followed on their subjects (seeded from the hosts bucket). */
    view: HostView<Beat>,
    /** Where keyed requests are queued (its ack wait bounds when a run may skip claiming its key: jobs.ts). */
    jobs: JobQueue,
    opts: SchedulerOptions,
    logger: Logger,
  ) {
    const log = logger.child({ component: 'scheduler' });
    const hosts = new Hosts(nc, view, opts.hostTimeoutMs, opts.hostProbeTimeoutMs);
    this.#ctx = { hosts, buckets, childCostMiB: opts.childCostMiB, log, locate: (kind, id) => locate(buckets.locator, kind, id, log) };
    const perform: Perform = {
      'vm.boot': (req, key) => this.#boot(req, key),
      'snapshot.create': (req, key) => this.#snapshot(req, key),
      fork: (req, key, last) => fork(this.#ctx, req, key, last),
      batch: (req, key, last) => batch(this.#ctx, req, key, last),
      'template.create': (req, key, last) => this.#createTemplate(req, key, last),
    };
    this.#jobs = new Jobs(
      buckets.requests,
      nc,
      jobs,
      perform,
      { ...opts, ackWaitMs: jobs.opts.ackWaitMs, startWindowMs: () => hosts.longestStartWindowMs() },
      log,
    );
    this.#reaper = setInterval(() => void this.reap(), opts.templateReapMs ?? 30_000).unref();
  }

  /** Stops the reaper's timer and the watch of outcomes (the service and connection are the caller's). */
  stop(): void {
    clearInterval(this.#reaper);
    this.#jobs.stop();
  }

  async hosts(): Promise<HostStatus[]> {
    return this.#ctx.hosts.statuses();
  }

  /** Runs one delivery of a job (see Jobs.run). */
  runJob(d: JobDelivery): Promise<JobOutcome> {
    return this.#jobs.run(d);
  }

  boot(req: SchedBootRequest): Promise<VmInfo> {
    // A template's VM is a fork of the template's snapshot, made without a policy (issue 22: not yet).
    if (req.template && req.selfFork)
      return Promise.reject(new ValidationError('selfFork: not with a template yet; boot from an image', { field: 'selfFork' }));
    return this.#jobs.once(
      'vm.boot',
      req,
      async () => (req.template ? templateFor(this.#ctx, { ...req, template: req.template }) : this.#bootHost(req)),
      (key) => this.#boot(req, key),
    );
  }

  /** Makes a template: a keyed one is a job, run once under its key (template-create.ts). */
  createTemplate(req: TemplateCreateRequest): Promise<TemplateInfo> {
    return this.#jobs.once(
      'template.create',
      req,
      async () => pickBuildHost(this.#ctx, req),
      (key) => this.#createTemplate(req, key, true),
    );
  }

  templates(): Promise<TemplateList> {
    return templateList(this.#ctx);
  }

  template(name: string): Promise<TemplateInfo> {
    return templateShow(this.#ctx, name);
  }

  async deleteTemplate(name: string): Promise<TemplateDeleteResult> {
    const r = await templateDelete(this.#ctx, name);
    void this.reap();
    return r;
  }

  /** One round of deleting retired template snapshots that nothing uses; rounds never overlap here. */
  reap(): Promise<unknown> {
    this.#reaping ??= reapRetired(this.#ctx)
      .catch((err: unknown) => this.#ctx.log.warn({ err }, 'template reaper round failed'))
      .finally(() => (this.#reaping = undefined));
    return this.#reaping;
  }

  fork(req: SchedForkRequest): Promise<ForkResult> {
    return this.#jobs.once(
      'fork',
      req,
      () => this.locate(sourceKind(req.source), req.source),
      (key) => fork(this.#ctx, req, key, true),
    );
  }

  batch(req: BatchRequest): Promise<BatchResult> {
    return this.#jobs.once(
      'batch',
      req,
      async () => undefined,
      (key) => batch(this.#ctx, req, key, true),
    );
  }

  snapshot(req: SnapshotCreateRequest): Promise<SnapshotInfo> {
    return this.#jobs.once(
      'snapshot.create',
      req,
      () => this.locate('vm', req.vm),
      (key) => this.#snapshot(req, key),
    );
  }

  /** The lineage of every snapshot, as hosts recorded it in JetStream. */
  tree(): Promise<SnapshotTree> {
    return tree(this.#ctx);
  }

  /** Deletes a snapshot on every host that holds a copy; with `cascade`, what is below it first. */
  deleteSnapshot(id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
    return deleteSnapshot(this.#ctx, id, cascade);
  }

  /** Forwards a request about one VM or snapshot to the host that holds it. */
  forward<E extends Forwarded>(endpoint: E, req: ForwardedRequest<E>): Promise<unknown> {
    return forward(this.#ctx, endpoint, req);
  }

  /** Forwards a sandbox request (exec.start, file.read, …) to the VM's host. */
  forwardGuest(endpoint: GuestEndpoint, req: { id: string }): Promise<unknown> {
    return forwardGuest(this.#ctx, endpoint, req);
  }

  /** Every live host's VMs (or snapshots), and a down host's VMs as lost. */
  gather<E extends 'vm.list' | 'snapshot.list'>(endpoint: E, filter?: Parameters<typeof gather>[2]): Promise<unknown[]> {
    return gather(this.#ctx, endpoint, filter);
  }

  locate(kind: Located, id: string): Promise<string> {
    return this.#ctx.locate(kind, id);
  }

  async #createTemplate(req: TemplateCreateRequest, key: string, last: boolean): Promise<TemplateInfo> {
    try {
      return await createTemplate(this.#ctx, req, key, last);
    } finally {
      // A replaced template's snapshot may already be unused.
      void this.reap();
    }
  }

  #bootHost(req: SchedBootRequest): string {
    // hostd's default RAM (BootRequest) when none was asked.
    return pickHost(this.#ctx.hosts.statuses(), { memMiB: (req.memMiB ?? 256) + 64, count: 1, gpus: req.gpus }, req.host);
  }

  async #boot(req: SchedBootRequest, key: string): Promise<VmInfo> {
    if (req.template) return bootFromTemplate(this.#ctx, { ...req, template: req.template }, key);
    const host = this.#bootHost(req);
    return this.#ctx.hosts.onHost(host, (c) =>
      c.call('vm.boot', {
        // Only what was asked: hostd applies the defaults.
        ...(req.image ? { image: req.image } : {}),
        ...(req.memMiB ? { memMiB: req.memMiB } : {}),
        ...(req.cpus ? { cpus: req.cpus } : {}),
        gpus: req.gpus,
        ...(req.apps ? { apps: req.apps } : {}),
        ...(req.diskGiB ? { diskGiB: req.diskGiB } : {}),
        ...(req.network ? { network: req.network } : {}),
        ...(req.name ? { name: req.name } : {}),
        ...(req.labels ? { labels: req.labels } : {}),
        ...(req.selfFork ? { selfFork: req.selfFork } : {}),
        ...lifetimeOf(req),
        key,
      }),
    );
  }

  async #snapshot(req: SnapshotCreateRequest, key: string): Promise<SnapshotInfo> {
    return this.#ctx.hosts.onHost(await this.locate('vm', req.vm), (c) =>
      c.call('snapshot.create', { vm: req.vm, resume: req.resume, ...(req.keep ? { keep: true } : {}), key }),
    );
  }
}
