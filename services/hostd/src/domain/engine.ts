import type {
  BootRequest,
  ExecRequest,
  ExecResult,
  ForkRequest,
  ForkResult,
  HostInfo,
  SnapshotCreateRequest,
  SnapshotDeleteResult,
  SnapshotInfo,
  TransferResult,
  VmAppRequest,
  VmInfo,
  VmNetworkRequest,
} from '@forky/contract';
import { asForkyError, type ErrorCode } from '@forky/base';
import type { GuestSession } from '@forky/agent';
import { refuseGpuSnapshot } from './admission.js';
import type { EngineDeps } from './deps.js';
import { Host } from './host.js';
import type { RecoveryReport } from './recovery.js';
import { Requests } from './requests.js';
import { applyApps } from './ops/apps.js';
import { boot } from './ops/boot.js';
import { deleteSnapshot } from './ops/delete-snapshot.js';
import { exec } from './ops/exec.js';
import { guestSession } from './ops/guest.js';
import { fork } from './ops/fork.js';
import { hostInfo } from './ops/info.js';
import { destroyVm, pause, resume } from './ops/lifecycle.js';
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

  constructor(d: EngineDeps) {
    this.#host = new Host(d, warmMaker);
    this.#requests = new Requests(d.records, this.#host.log);
  }

  /** Processes waiting in the warm pool, for one snapshot or all. */
  warmCount(snapshot?: string): number {
    return this.#host.pool.size(snapshot);
  }

  /** Stops what only lives for this process (the warm pool, guest agent sessions); VMs stay. */
  async close(): Promise<void> {
    try {
      await this.#host.pool.dropAll();
    } finally {
      await this.#host.runtime.close();
    }
  }

  /** Ids of what this host holds, for heartbeats. */
  ids(): { vmList: VmInfo[]; snapshotIds: string[] } {
    return { vmList: this.list(), snapshotIds: [...this.#host.snaps.keys()] };
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
    return this.#requests.exec(req.key, fingerprint, (sent) => exec(this.#host, req, sent));
  }

  /** A running VM's guest agent session (the sandbox endpoints' way in). */
  guest(id: string): Promise<GuestSession> {
    return guestSession(this.#host, id);
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

  snapshot(req: SnapshotCreateRequest): Promise<SnapshotInfo> {
    try {
      refuseGpuSnapshot(this.#host, req.vm, 'vm');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#requests.once(req.key, 'snapshot', () =>
      this.#changes(() => this.#host.ram.during((hold) => snapshotVm(this.#host, req.vm, req.resume, hold)).then((s) => s.info)),
    );
  }

  /** Deletes a snapshot; with `cascade`, what runs on it or below it on this host first. */
  deleteSnapshot(id: string, cascade = false): Promise<SnapshotDeleteResult> {
    return this.#changes(() => deleteSnapshot(this.#host, id, cascade));
  }

  fork(req: ForkRequest): Promise<ForkResult> {
    return this.#requests.once(req.key, 'fork', () => this.#changes(() => fork(this.#host, req)));
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
    return this.#changes(() => fetch(this.#host, id));
  }

  /** Takes back what an earlier hostd of this data directory left. Runs once, before the host serves. */
  recover(): Promise<RecoveryReport> {
    return this.#changes(async () => {
      const r = await recover(this.#host);
      this.#requests.restore(r.requests);
      return r.report;
    });
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
      if (!REFUSALS.has(asForkyError(e).code)) await this.#host.changed();
      throw e;
    }
    await this.#host.changed();
    return result;
  }
}
