import type {
  BootRequest,
  ExecRequest,
  ExecResult,
  ForkRequest,
  ForkResult,
  ForkAbandonResult,
  HostInfo,
  SnapshotCreateRequest,
  SnapshotDeleteResult,
  SnapshotInfo,
  TransferResult,
  VmAppRequest,
  VmInfo,
  VmExtendRequest,
  VmNetworkRequest,
} from '@forky/contract';
import { asForkyError, type ErrorCode } from '@forky/base';
import type { GuestSession } from '@forky/agent';
import { refuseGpuSnapshot } from './admission.js';
import type { EngineDeps } from './deps.js';
import { Host } from './host.js';
import type { RecoveryReport } from './recovery.js';
import { Requests } from './requests.js';
import { Retention } from './retention.js';
import { applyApps } from './ops/apps.js';
import { boot } from './ops/boot.js';
import { deleteSnapshot } from './ops/delete-snapshot.js';
import { exec } from './ops/exec.js';
import { guestSession } from './ops/guest.js';
import { fork } from './ops/fork.js';
import { SelfForks } from './ops/self-fork.js';
import { shareOwn } from './self-fork-tree.js';
import { withSelfForkEvents } from './self-fork-lines.js';
import { hostInfo } from './ops/info.js';
import { abandonFork } from './ops/abandon.js';
import { destroyIfDue, destroyVm, extend, lifetimeDue, pause, resume, touch, wake, work } from './ops/lifecycle.js';
import { setNetwork, withRefused } from './ops/network.js';
import { recover } from './ops/recover.js';
import { fetch, publish } from './ops/ship.js';
import { snapshotVm } from './ops/snapshot.js';
import { warmMaker } from './ops/warm.js';

export type { EngineDeps, EngineLimits } from './deps.js';

/** Codes of requests refused before anything was touched. */
const REFUSALS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CAPACITY',
  'INCOMPATIBLE',
  'CONFLICT',
  'NOT_FOUND',
  'INVALID_STATE',
  'BAD_REQUEST',
]);

/**
 * The fork logic of one host, spoken against ports (domain/ports.ts). A thin facade: each method
 * is one operation of ops/ over the host context (host.ts), deduped by key where it has one
 * (requests.ts), and followed by one `changed()` (a heartbeat soon, unused layers collected).
 * Every operation on a VM runs under its lock, checks the state machine first, refuses before it
 * touches anything (admission.ts) and undoes what it did if a later step fails (rollback.ts).
 */
export class HostEngine {
  readonly #host: Host;
  readonly #requests: Requests;
  readonly #retention: Retention;
  /** Guests' own forks (`forky-fork`, issue 22), from each VM's self-fork port. */
  readonly #selfForks: SelfForks;

  constructor(d: EngineDeps) {
    // A VM's end is told to the self-fork waiters too (a `--wait` ends when its children do), and a
    // fork's children to self-fork (a spread one's children here get their replies).
    const dd = withSelfForkEvents(
      d,
      (vm, how) => this.#selfForks.vmEnded(vm, how),
      (children, source) =>
        void this.#selfForks.forkedHere(children, source).catch((err: unknown) => this.#host.log.warn({ err }, 'self-fork child replies')),
    );
    // A VM past its TTL goes through this facade's destroy: the host's change is told, as for any destroy.
    this.#host = new Host(dd, warmMaker, (host, ...a) =>
      lifetimeDue(host, ...a, (id, check) => this.#changes(() => destroyIfDue(this.#host, id, check))),
    );
    this.#requests = new Requests(d.records, this.#host.log);
    this.#retention = new Retention(this.#host, d.limits.snapshotRetentionMs ?? 0, (id, due) =>
      this.#changes(() => deleteSnapshot(this.#host, id, false, due)),
    );
    this.#selfForks = new SelfForks(
      this.#host,
      {
        fork: (req, own) => this.#changes(() => fork(this.#host, req, own)),
        resume: (id) => this.resume(id),
        destroy: (id) => this.destroy(id),
      },
      d.limits.selfForkRate,
    );
    d.runtime.onSelfFork?.((vm, line) => this.#selfForks.line(vm, line));
  }

  /** Processes waiting in the warm pool, for one snapshot or all. */
  warmCount(snapshot?: string): number {
    return this.#host.pool.size(snapshot);
  }

  /** Stops what only lives for this process (the warm pool, guest agent sessions); VMs stay. */
  async close(): Promise<void> {
    // Pending `--wait`s end (their timers with them); the runtime's close then closes the ports.
    this.#selfForks.close();
    this.#host.close();
    try {
      await this.#retention.close();
      await this.#host.pool.dropAll();
    } finally {
      await this.#host.runtime.close();
    }
  }

  /** Ids of what this host holds, for heartbeats. */
  snapshotIds(): string[] {
    return [...this.#host.snaps.keys()];
  }

  // ---- queries
  hostInfo(): Promise<HostInfo> {
    return hostInfo(this.#host);
  }

  list(): VmInfo[] {
    return [...this.#host.vms.values()].map((r) => this.#host.info(r));
  }

  show(id: string): VmInfo {
    return this.#host.info(this.#host.vm(id));
  }

  /** `show` with what the VM's network filter has refused so far. */
  showWithCounters(id: string): Promise<VmInfo> {
    return withRefused(this.#host, this.show(id));
  }

  listSnapshots(): SnapshotInfo[] {
    return [...this.#host.snaps.values()].map((s) => s.info);
  }

  showSnapshot(id: string): SnapshotInfo {
    return this.#host.snap(id).info;
  }

  // ---- operations
  boot(req: BootRequest): Promise<VmInfo> {
    return this.#requests.once(req.key, 'boot', () => this.#changes(() => this.#host.ram.during((hold) => boot(this.#host, req, hold))));
  }

  pause(id: string): Promise<VmInfo> {
    return pause(this.#host, id);
  }

  resume(id: string): Promise<VmInfo> {
    return resume(this.#host, id);
  }

  /** Runs a command in the guest; under a key, once: a repeat gets the first run's outcome. */
  exec(req: ExecRequest): Promise<ExecResult> {
    const fingerprint = JSON.stringify([req.id, req.cmd, req.input ?? null, req.timeoutMs]);
    // Work under way until it ends (the idle rule waits for it); a VM its idle rule paused is resumed first.
    return this.#requests.exec(req.key, fingerprint, (sent) => {
      const end = work(this.#host, req.id);
      return wake(this.#host, req.id)
        .then(() => exec(this.#host, req, sent))
        .finally(end);
    });
  }

  /** A running VM's guest agent session (the sandbox endpoints' way in): activity, and a VM its idle rule paused is resumed first. */
  async guest(id: string): Promise<GuestSession> {
    await wake(this.#host, id);
    return guestSession(this.#host, id);
  }

  /** Bytes of a running stream of the VM's (exec output and input, file chunks, port bytes): activity; resumes a VM its idle rule paused. */
  touch(id: string): void {
    touch(this.#host, id);
  }

  /** A guest stream or call on the VM begins: its idle rule waits until the returned function ends it. */
  work(id: string): () => void {
    return work(this.#host, id);
  }

  /** The VM now expires `ttlMs` from now. */
  extend(req: VmExtendRequest): Promise<VmInfo> {
    return this.#changes(() => extend(this.#host, req));
  }

  /** Mounts app layers in a running VM (new mount points, or new layers at old ones). */
  apps(req: VmAppRequest): Promise<VmInfo> {
    return this.#requests.once(req.key, 'app', () => this.#changes(() => applyApps(this.#host, req)));
  }

  /** Changes a running VM's egress policy (from its next packet on); the same policy again changes nothing. */
  network(req: VmNetworkRequest): Promise<VmInfo> {
    // Under its key, once: a late resend of an older change must not undo a newer one.
    return this.#requests.once(req.key, 'network', () => this.#changes(() => setNetwork(this.#host, req)));
  }

  destroy(id: string): Promise<VmInfo> {
    return this.#changes(() => destroyVm(this.#host, id));
  }

  snapshot(req: Omit<SnapshotCreateRequest, 'keep'> & { keep?: boolean }): Promise<SnapshotInfo> {
    try {
      refuseGpuSnapshot(this.#host, req.vm, 'vm');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#requests.once(req.key, 'snapshot', () =>
      this.#changes(() => this.#host.ram.during((hold) => snapshotVm(this.#host, req.vm, req.resume, hold, req.keep)).then((s) => s.info)),
    );
  }

  /** Deletes a snapshot; with `cascade`, what runs on it or below it on this host first. */
  deleteSnapshot(id: string, cascade = false): Promise<SnapshotDeleteResult> {
    return this.#changes(() => deleteSnapshot(this.#host, id, cascade));
  }

  fork(req: ForkRequest): Promise<ForkResult> {
    return this.#requests.once(req.key, 'fork', () => this.#changes(() => fork(this.#host, req, shareOwn(req.perChild))));
  }

  /** The caller of the keyed fork `key` gave it up for good: its children go (ops/abandon.ts). */
  abandonFork(key: string): Promise<ForkAbandonResult> {
    return abandonFork(this.#requests, key, (id) => this.destroy(id), this.#host.log);
  }

  /** Destroys every VM and snapshot (for `forky down` and tests). */
  async destroyAll(): Promise<void> {
    const log = this.#host.log;
    await this.#host.pool.dropAll();
    await Promise.all(
      [...this.#host.vms.keys()].map((id) => this.destroy(id).catch((e: unknown) => log.warn({ err: e, vm: id }, 'destroy failed'))),
    );
    // Newest first: a later snapshot's chain runs through the layers of earlier ones.
    for (const id of [...this.#host.snaps.keys()].reverse())
      await this.deleteSnapshot(id, true).catch((e: unknown) => log.warn({ err: e, id }, 'snapshot delete failed'));
  }

  /** Puts this host's snapshot in the object store (only the parts it lacks). */
  publish(id: string): Promise<TransferResult> {
    return publish(this.#host, id);
  }

  /** Brings a published snapshot here (only the parts this host lacks). */
  fetch(id: string): Promise<TransferResult> {
    return this.#changes(async () => {
      const r = await fetch(this.#host, id);
      // A fork follows: its retention starts over (a copy already held included), before the sweep below.
      this.#retention.used(id);
      return r;
    });
  }

  /** Takes back what an earlier hostd of this data directory left. Runs once, before the host serves. */
  recover(): Promise<RecoveryReport> {
    // No expiry while snapshots are taken back before the VMs that run on them.
    return this.#retention.hold(() =>
      this.#changes(async () => {
        const r = await recover(this.#host);
        this.#requests.restore(r.requests);
        // A guest waiting on a request the earlier hostd was carrying out is told it is lost.
        await this.#selfForks.recovered().catch((err: unknown) => this.#host.log.warn({ err }, 'self-fork: lost replies'));
        // A VM whose TTL passed while no hostd ran goes now.
        this.#host.lifetimes.arm();
        return r.report;
      }),
    );
  }

  /**
   * Runs one operation, then tells the host it changed, once. A refusal (admission.ts: before
   * anything is touched) changed nothing; another failure may have (past a point of no return).
   * A keyed repeat answered from requests.ts runs nothing.
   */
  async #changes<T>(op: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await op();
    } catch (e) {
      if (!REFUSALS.has(asForkyError(e).code)) await this.#changed();
      throw e;
    }
    await this.#changed();
    return result;
  }

  async #changed(): Promise<void> {
    await this.#host.changed();
    // What is in use may have changed: snapshots' expiry is looked at again.
    this.#retention.poke();
  }
}
