import fs from 'node:fs/promises';
import os from 'node:os';
import {
  CapacityError,
  ConflictError,
  ForkyError,
  IncompatibleError,
  asForkyError,
  InvalidStateError,
  KeyedMutex,
  NotFoundError,
  mapSettled,
  newId,
  type Logger,
} from '@forky/base';
import type {
  BootRequest,
  ExecRequest,
  ExecResult,
  AppMount,
  ForkRequest,
  ForkResult,
  HostInfo,
  TransferResult,
  MachineProfile,
  SnapshotCreateRequest,
  SnapshotDeleteResult,
  SnapshotInfo,
  VmAppRequest,
  VmInfo,
  VmState,
} from '@forky/contract';
import type { Image, ImageCatalog } from '../images.js';
import type { Layout } from '../layout.js';
import type { AppLayerStore, Directory, LayerStore, PartStore, RamSpace, SnapshotStore, VmHandle, VmRuntime, VmSpec } from './ports.js';
import { RamAdmission, UNLIMITED_RAM, knownRamFiles, ramNeed, type RamHold } from './admission.js';
import { AppMounter, bootDevices } from './apps.js';
import { ShippingManifest, fetch as fetchSnapshot, publish as publishSnapshot } from './shipping.js';
import { assertAllowed, assertTransition } from './state.js';
import { markFailed, recordForDisk, removeRuntimeFiles, removeVmFiles, vmInfo, writeJsonAtomic, type SnapshotRecord, type VmRecord } from './records.js';
import { recoverHost, type RecoveryReport } from './recovery.js';
import { ksmSavedMiB, meminfo, pssMiB } from './host-stats.js';
import { giveIdentity, newMac } from './identity.js';
import { WarmPool, loadWarm, type WarmChild, type WarmPoolOptions } from './warm-pool.js';
import { GpuAllocator } from './gpus.js';

export interface EngineLimits {
  bootTimeoutMs: number;
  restoreTimeoutMs: number;
  /** Children started at once during a fork. */
  forkConcurrency: number;
  maxVms: number;
  /** What one forked child is assumed to cost, for the capacity check. */
  childCostMiB: number;
  /** Memory kept free for the host itself. */
  reserveMiB: number;
  /** Disk layers a VM's chain may reach before a snapshot flattens it. */
  maxChainDepth: number;
  agentTimeoutMs: number;
}

export interface EngineDeps {
  hostId: string;
  /** Why the runtime's accelerator was chosen (the probe's outcome). */
  accelReason: string;
  runtime: VmRuntime;
  layers: LayerStore;
  /** App layers (packed directories) kept on this host. */
  appLayers: AppLayerStore;
  snapshots: SnapshotStore;
  images: ImageCatalog;
  layout: Layout;
  limits: EngineLimits;
  logger: Logger;
  /** Where the cluster learns which host holds what; none for a host on its own. */
  directory?: Directory;
  /** The object store snapshots travel through; none for a host on its own. */
  parts?: PartStore;
  /** Called when the set of VMs or snapshots changes, so a heartbeat can go out soon. */
  onChange?: () => void;
  /** Processes kept waiting per hot snapshot (default: none). */
  pool?: WarmPoolOptions;
  /** Who holds this host's passthrough GPUs (default: the host has none). */
  gpus?: GpuAllocator;
  /** The RAM directory's filesystem, for admission (default: unchecked, as in a dry run). */
  ramSpace?: RamSpace;
}

const NO_DIRECTORY: Directory = {
  register: async () => undefined,
  unregister: async () => undefined,
  recordLineage: async () => undefined,
  forgetLineage: async () => undefined,
};
/** A part younger than this is never swept: its manifest may be on its way. */
const PART_GRACE_MS = 10 * 60_000;
/** Idempotency keys remembered; the oldest are forgotten past this (the scheduler keeps them a day). */
const MAX_KEYS = 10_000;

/**
 * The fork logic of one host, spoken against ports (VmRuntime, LayerStore, SnapshotStore).
 * Every operation on a VM runs under that VM's lock and checks the state machine first; a VM
 * that fails half-way is taken apart again, so no half-made VM or stray file outlives a request.
 */
export class HostEngine {
  readonly #vms = new Map<string, VmRecord>();
  readonly #snaps = new Map<string, SnapshotRecord>();
  /** Forks in flight per snapshot: a snapshot in use cannot be deleted. */
  readonly #snapUsers = new Map<string, number>();
  /** Layers being made, not yet in any chain: garbage collection leaves them alone. */
  readonly #pendingLayers = new Set<string>();
  /** Requests by idempotency key: the same key gets the same outcome, run once. */
  readonly #byKey = new Map<string, { op: string; result: Promise<unknown> }>();
  readonly #lock = new KeyedMutex();
  readonly #log: Logger;
  readonly #dir: Directory;
  readonly #pool: WarmPool;
  readonly #gpus: GpuAllocator;
  readonly #apps: AppMounter;
  readonly #ram: RamAdmission;

  constructor(private readonly d: EngineDeps) {
    this.#log = d.logger.child({ component: 'engine' });
    this.#gpus = d.gpus ?? new GpuAllocator([], d.hostId);
    this.#apps = new AppMounter(d.runtime, d.appLayers, this.#log.child({ component: 'apps' }), {
      fetchMs: 10 * 60_000,
      guestMs: Math.max(30_000, d.limits.agentTimeoutMs),
    });
    this.#dir = d.directory ?? NO_DIRECTORY;
    const ramFiles = () => knownRamFiles(this.#vms.values(), this.#snaps.values(), (id) => d.snapshots.files(id).ram);
    this.#ram = new RamAdmission(d.ramSpace ?? UNLIMITED_RAM, d.hostId, ramFiles, this.#log.child({ component: 'ram-admission' }));
    this.#pool = new WarmPool(
      d.pool ?? { size: 0, maxSnapshots: 0 },
      (snap) => this.#makeWarm(snap),
      (c) => this.#discardWarm(c),
      this.#log.child({ component: 'warm-pool' }),
    );
  }

  /** Processes waiting in the warm pool, for one snapshot or all. */
  warmCount(snapshot?: string): number {
    return this.#pool.size(snapshot);
  }

  /** Stops what only lives for this process (the warm pool); VMs stay. */
  async close(): Promise<void> {
    await this.#pool.dropAll();
  }

  /** Ids of what this host holds, for heartbeats. */
  ids(): { vmList: VmInfo[]; snapshotIds: string[] } {
    return { vmList: this.list(), snapshotIds: [...this.#snaps.keys()] };
  }

  // ---- queries

  async hostInfo(): Promise<HostInfo> {
    const mem = await meminfo();
    const pss = await Promise.all([...this.#vms.values()].map(async (v) => ({ child: !!v.parentSnapshot, mib: v.pid ? await pssMiB(v.pid) : 0 })));
    const children = pss.filter((p) => p.child && p.mib > 0).map((p) => p.mib).sort((a, b) => a - b);
    return {
      memCommittedMiB: Math.round(pss.reduce((a, p) => a + p.mib, 0)),
      childPssMiB: Math.round((children[Math.floor(children.length / 2)] ?? 0) * 10) / 10,
      ksmSavedMiB: await ksmSavedMiB(),
      gpus: { total: this.#gpus.total, free: this.#gpus.free },
        id: this.d.hostId,
        accel: this.d.runtime.accel,
        accelReason: this.d.accelReason,
        qemuVersion: this.d.runtime.qemuVersion,
        cpus: os.cpus().length,
        memTotalMiB: mem.totalMiB,
        memFreeMiB: mem.availableMiB,
        vms: this.#vms.size,
        snapshots: this.#snaps.size,
        images: await this.d.images.list(),
    };
  }

  list(): VmInfo[] {
    return [...this.#vms.values()].map((r) => this.#info(r));
  }

  show(id: string): VmInfo {
    return this.#info(this.#vm(id));
  }

  listSnapshots(): SnapshotInfo[] {
    return [...this.#snaps.values()].map((s) => s.info);
  }

  showSnapshot(id: string): SnapshotInfo {
    return this.#snap(id).info;
  }

  // ---- VM lifecycle

  boot(req: BootRequest): Promise<VmInfo> {
    return this.#once(req.key, 'boot', () => this.#ram.during((hold) => this.#boot(req, hold)));
  }

  async #boot(req: BootRequest, hold: RamHold): Promise<VmInfo> {
    const image = await this.d.images.get(req.image);
    await this.#checkCapacity(req.memMiB + 64, 1);
    const id = newId('vm');
    await hold.admit(ramNeed.boot(this.d.layout.vmRam(id), req.memMiB), 'memMiB');
    const rec = this.#newRecord(id, image, req.memMiB, req.cpus, 'booting', {
      ram: { file: this.d.layout.vmRam(id), shared: true },
      kernelCmdline: `${image.cmdline} forky.hostname=${id}`,
      chain: [],
    });
    if (req.key) rec.requestKey = req.key;
    // Taken before anything is made; #make's clean-up gives them back if the boot fails.
    const gpus = this.#gpus.take(id, req.gpus);
    if (gpus.length > 0) rec.gpus = gpus.map((g) => ({ group: g.group, functions: g.functions }));
    let unpin = (): void => undefined;
    let base: string;
    try {
      unpin = await this.#apps.prefetch(req.apps ?? []);
      base = await this.d.layers.importImage(image);
    } catch (e) {
      this.#gpus.release(id);
      unpin();
      throw e;
    }
    if (req.apps?.length) rec.apps = bootDevices(req.apps);
    rec.chain.push(base);
    return this.#make(rec, image, base, async (spec) => {
      const h = await this.d.runtime.boot(spec, this.d.limits.bootTimeoutMs);
      try {
        await this.#apps.mountAll(rec, h);
      } catch (e) {
        await this.d.runtime.destroy(h);
        throw e;
      }
      return h;
    }).finally(unpin);
  }

  pause(id: string): Promise<VmInfo> {
    return this.#op(id, 'pause', async (vm, h) => {
      await this.d.runtime.pause(h);
      await this.#setState(vm, 'paused');
    });
  }

  resume(id: string): Promise<VmInfo> {
    return this.#op(id, 'resume', async (vm, h) => {
      await this.d.runtime.resume(h);
      await this.#setState(vm, 'running');
    });
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    // A child returned at `running` is reached only once its identity is set and its agent answers.
    await this.#vms.get(req.id)?.settling;
    const vm = this.#vm(req.id);
    assertAllowed(vm.id, vm.state, 'exec');
    return this.d.runtime.exec(this.#handle(vm), req.cmd, { timeoutMs: req.timeoutMs, ...(req.input === undefined ? {} : { input: req.input }) });
  }

  /** Mounts app layers in a running VM (new mount points, or new layers at old ones). */
  apps(req: VmAppRequest): Promise<VmInfo> {
    return this.#once(req.key, 'app', async () => {
      await this.#vms.get(req.id)?.settling;
      return this.#lock.run(req.id, async () => {
        const vm = this.#vm(req.id);
        assertAllowed(vm.id, vm.state, 'app');
        await this.#apps.apply(vm, this.#handle(vm), req.apps, () => this.#persist(vm));
        this.#log.info({ vm: vm.id, apps: req.apps }, 'app layers mounted');
        this.d.onChange?.();
        await this.#gcLayers();
        return this.#info(vm);
      });
    });
  }

  destroy(id: string): Promise<VmInfo> {
    this.#vm(id);
    return this.#lock.run(id, async () => {
      const vm = this.#vm(id);
      assertAllowed(id, vm.state, 'destroy');
      await this.#setState(vm, 'destroying');
      await this.#teardown(vm);
      // The zero pages this child's first touches filled in its snapshot's frozen file go back.
      if (!vm.ram.shared) await this.#ram.reclaim(vm.ram.file);
      vm.state = 'destroyed';
      this.#vms.delete(id);
      await this.#dir.unregister('vm', id).catch((err: unknown) => this.#log.warn({ err, vm: id }, 'locator delete failed'));
      this.d.onChange?.();
      await this.#gcLayers();
      this.#log.info({ vm: id }, 'vm destroyed');
      return this.#info(vm);
    });
  }

  // ---- snapshots and forks

  snapshot(req: SnapshotCreateRequest): Promise<SnapshotInfo> {
    this.#refuseGpuSnapshot(req.vm, 'vm');
    return this.#once(req.key, 'snapshot', () => this.#ram.during((hold) => this.#snapshotVm(req.vm, req.resume, hold)).then((s) => s.info));
  }

  /**
   * Deletes a snapshot. Refused while a VM runs on its memory or disk, or another snapshot's disk
   * chain runs through it; with `cascade` those go first (on this host; the scheduler walks the
   * lineage across hosts).
   */
  deleteSnapshot(id: string, cascade = false): Promise<SnapshotDeleteResult> {
    this.#snap(id);
    return this.#lock.run(id, () => this.#deleteSnapshot(id, cascade));
  }

  async #deleteSnapshot(id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
    const s = this.#snap(id);
    const { vms, snapshots } = this.#dependents(s);
    const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
    if ((this.#snapUsers.get(id) ?? 0) > 0) throw new ConflictError(`snapshot ${id} is in use by a fork in progress`, { vms: [], snapshots: [] });
    if (vms.length + snapshots.length > 0) {
      if (!cascade) {
        throw new ConflictError(
          `snapshot ${id} is in use by ${[...vms, ...snapshots].join(', ')} (VMs forked from it or running on its memory since it was taken, snapshots below it); destroy those first or delete with cascade`,
          { vms, snapshots },
        );
      }
      for (const vm of vms) {
        await this.destroy(vm);
        out.vms.push(vm);
      }
      for (const child of snapshots) {
        if (!this.#snaps.has(child)) continue;
        const r = await this.#lock.run(child, () => this.#deleteSnapshot(child, true));
        out.vms.push(...r.vms);
        out.snapshots.push(...r.snapshots);
      }
    }
    await this.#pool.drop(id);
    this.#snaps.delete(id);
    await this.d.snapshots.remove(id);
    if (!s.origin) {
      // The origin retires the published manifest and the lineage entry; parts only it referred to are collected.
      await this.#dir.unregister('snap', id).catch((err: unknown) => this.#log.warn({ err, snapshot: id }, 'locator delete failed'));
      await this.#dir.forgetLineage(id).catch((err: unknown) => this.#log.warn({ err, snapshot: id }, 'lineage delete failed'));
      if (this.d.parts) {
        await this.d.parts.deleteManifest(id).catch(() => undefined);
        const swept = await this.d.parts.sweep(PART_GRACE_MS).catch((err: unknown) => this.#log.warn({ err }, 'part sweep failed'));
        if (swept) this.#log.info({ snapshot: id, ...swept }, 'object store swept');
      }
    }
    this.d.onChange?.();
    await this.#gcLayers();
    out.snapshots.push(id);
    return out;
  }

  /**
   * What on this host depends on snapshot `s`: VMs on its RAM or disk layer, snapshots whose disk
   * chain runs through its layer. A snapshot below it in the lineage alone does not: its RAM is
   * its own, and the tree shows it with its parent gone.
   */
  #dependents(s: SnapshotRecord): { vms: string[]; snapshots: string[] } {
    const frozen = s.chain.at(-1) as string;
    const ram = this.d.snapshots.files(s.info.id).ram;
    const vms = [...this.#vms.values()].filter((v) => v.chain.includes(frozen) || v.ram.file === ram).map((v) => v.id);
    const snapshots = [...this.#snaps.values()]
      .filter((o) => o !== s && o.chain.includes(frozen))
      .map((o) => o.info.id);
    return { vms, snapshots };
  }

  fork(req: ForkRequest): Promise<ForkResult> {
    return this.#once(req.key, 'fork', async () => {
      // The children's apps are fetched (or refused) before the source is touched.
      const unpin = await this.#apps.prefetch(req.apps ?? []);
      try {
        return await this.#ram.during((hold) => this.#fork(req, hold));
      } finally {
        unpin();
      }
    });
  }

  async #fork(req: ForkRequest, hold: RamHold): Promise<ForkResult> {
    const started = performance.now();
    // Checked before anything is made: a fork refused for room leaves the source as it was.
    await this.#checkCapacity(this.d.limits.childCostMiB, req.count);
    const fromVm = req.source.startsWith('vm-');
    if (fromVm) this.#refuseGpuSnapshot(req.source, 'source');
    if (req.apps?.length) this.#apps.plan({ id: `each child of ${req.source}`, apps: (fromVm ? this.#vms.get(req.source) : this.#snaps.get(req.source))?.apps ?? [] }, req.apps);
    await hold.admit(fromVm ? ramNeed.forkVm(this.#vm(req.source)) : ramNeed.forkSnapshot(this.#snap(req.source).info, this.d.snapshots.files(req.source).ram), 'source');
    const snap = fromVm ? await this.#snapshotVm(req.source, req.resumeParent, hold) : this.#snap(req.source);
    const pauseMs = fromVm ? snap.info.timings?.pauseMs : undefined;
    const snapshotMs = performance.now() - started;
    this.#snapUsers.set(snap.info.id, (this.#snapUsers.get(snap.info.id) ?? 0) + 1);
    try {
      const image = await this.d.images.get(snap.info.image);
      this.#checkProfile(snap.info.profile, image);
      const results = await mapSettled(Array.from({ length: req.count }), this.d.limits.forkConcurrency, () => this.#restoreChild(snap, image, started, req.until, req.key, req.apps));
      const children = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
      if (failed.length > 0) {
        // All or nothing: a fork that half-worked leaves no children behind.
        await Promise.all(children.map((c) => this.destroy(c.id).catch(() => undefined)));
        const first = failed[0];
        const msg = `${failed.length} of ${req.count} children failed; none kept: ${first instanceof Error ? first.message : String(first)}`;
        throw new ForkyError(asForkyError(first).code, msg, { cause: first });
      }
      this.#pool.refill(snap.info.id);
      return {
        snapshot: snap.info,
        children,
        timings: {
          snapshotMs: round(snapshotMs),
          ...(pauseMs === undefined ? {} : { pauseMs }),
          totalMs: round(performance.now() - started),
          childMs: children.map((c) => c.timings?.readyMs ?? 0),
        },
      };
    } finally {
      this.#snapUsers.set(snap.info.id, (this.#snapUsers.get(snap.info.id) ?? 1) - 1);
    }
  }

  /** Destroys every VM and snapshot (for `forky down` and tests). */
  async destroyAll(): Promise<void> {
    await this.#pool.dropAll();
    await Promise.all([...this.#vms.keys()].map((id) => this.destroy(id).catch((e: unknown) => this.#log.warn({ err: e, vm: id }, 'destroy failed'))));
    // Newest first: a later snapshot's chain runs through the layers of earlier ones.
    for (const id of [...this.#snaps.keys()].reverse()) await this.deleteSnapshot(id, true).catch((e: unknown) => this.#log.warn({ err: e, id }, 'snapshot delete failed'));
  }

  /** Puts this host's snapshot in the object store (only the parts it lacks). */
  publish(id: string): Promise<TransferResult> {
    this.#snap(id);
    return this.#lock.run(id, () => publishSnapshot(this.#shipping(), this.#snap(id)));
  }

  /** Brings a published snapshot here (only the parts this host lacks). */
  fetch(id: string): Promise<TransferResult> {
    return this.#lock.run(id, async () => {
      const t0 = performance.now();
      const have = this.#snaps.get(id);
      if (have) return { id, host: this.d.hostId, parts: 0, moved: 0, bytes: 0, nominalBytes: 0, ms: round(performance.now() - t0) };
      const m = ShippingManifest.parse(await this.#shipping().parts.getManifest(id));
      const image = await this.d.images.get(m.snapshot.image);
      this.#checkProfile(m.snapshot.profile, image);
      // Fetched layers belong to no chain until the snapshot is registered: keep them from GC.
      for (const p of m.chain) this.#pendingLayers.add(p.layer);
      const unpin = this.#apps.pin((m.apps ?? []).map((a) => a.layer));
      let fetched;
      try {
        fetched = await fetchSnapshot(this.#shipping(), m, image);
        this.#snaps.set(id, fetched.record);
      } catch (e) {
        await this.d.snapshots.remove(id);
        throw e;
      } finally {
        for (const p of m.chain) this.#pendingLayers.delete(p.layer);
        unpin();
      }
      const { record, result } = fetched;
      await writeJsonAtomic(`${this.d.layout.snapshotDir(id)}/snapshot.json`, record);
      this.#log.info(result, 'snapshot fetched');
      return result;
    });
  }

  // ---- internals

  #shipping() {
    if (!this.d.parts) throw new ForkyError('UNAVAILABLE', `host ${this.d.hostId} has no object store to ship snapshots through`);
    return { hostId: this.d.hostId, parts: this.d.parts, layers: this.d.layers, appLayers: this.d.appLayers, snapshots: this.d.snapshots, timeoutMs: 10 * 60_000 };
  }

  /** Runs `fn` once per key; a repeat waits for and returns the first run's outcome. */
  #once<T>(key: string | undefined, op: string, fn: () => Promise<T>): Promise<T> {
    if (!key) return fn();
    const seen = this.#byKey.get(key);
    if (seen) {
      if (seen.op !== op) return Promise.reject(new ConflictError(`idempotency key ${key} was used for a ${seen.op} request`, { field: 'key' }));
      return seen.result as Promise<T>;
    }
    const result = fn().then(async (value) => {
      // On disk too: after a restart, a retry gets this reply instead of a second set of VMs.
      await writeJsonAtomic(this.d.layout.requestRecord(key), { op, result: value });
      return value;
    });
    // A failed request may be retried under the same key.
    result.catch(() => this.#byKey.delete(key));
    this.#remember(key, op, result);
    return result;
  }

  #remember(key: string, op: string, result: Promise<unknown>): void {
    this.#byKey.set(key, { op, result });
    if (this.#byKey.size <= MAX_KEYS) return;
    const oldest = this.#byKey.keys().next().value as string;
    this.#byKey.delete(oldest);
    void fs.rm(this.d.layout.requestRecord(oldest), { force: true });
  }

  /**
   * Takes back what an earlier hostd of this data directory left: see recovery.ts. Runs once,
   * before the host serves.
   */
  async recover(): Promise<RecoveryReport> {
    const r = await recoverHost({
      runtime: this.d.runtime,
      layers: this.d.layers,
      snapshots: this.d.snapshots,
      layout: this.d.layout,
      spec: async (rec) => this.#spec(rec, await this.d.images.get(rec.image)),
      logger: this.#log,
    });
    for (const s of r.snaps) this.#snaps.set(s.info.id, s);
    for (const v of r.vms) {
      this.#vms.set(v.id, v);
      this.#gpus.adopt(v.id, (v.gpus ?? []).map((g) => g.group));
      const h = v.handle;
      if (h) void h.exited.then(() => this.#onExit(v, h));
      await this.#dir.register('vm', v.id).catch(() => undefined);
    }
    for (const id of r.report.removed) await this.#dir.unregister('vm', id).catch(() => undefined);
    for (const q of r.requests) this.#remember(q.key, q.op, Promise.resolve(q.result));
    await this.#gcLayers();
    if (r.vms.length + r.report.removed.length + r.report.orphansKilled > 0) this.#log.info(r.report, 'recovered after a restart');
    this.d.onChange?.();
    return r.report;
  }

  /**
   * Freezes a VM into a snapshot and hands the VM over to a successor process restored from it,
   * so the VM and the snapshot's children all map the same frozen RAM copy-on-write.
   * Before the pause: the successor is started (waiting for state), the snapshot's RAM is begun
   * (the VM's own RAM file renamed, or a copy of the frozen file it maps), its new disk layer made.
   * During the pause: device state saved, the pages the VM made its own copied, state loaded into
   * the successor. Until the successor has loaded, a failure puts the old process back as it was.
   */
  async #snapshotVm(vmId: string, resume: boolean, hold: RamHold): Promise<SnapshotRecord> {
    // A snapshot of a child still settling would freeze it before its identity is set. Waited for
    // outside the lock: a child that fails to settle is destroyed, which takes the lock.
    await this.#vm(vmId).settling;
    return this.#lock.run(vmId, async () => {
      const vm = this.#vm(vmId);
      assertAllowed(vmId, vm.state, 'snapshot');
      const h = this.#handle(vm);
      const before = vm.state;
      const image = await this.d.images.get(vm.image);
      const id = newId('snap');
      const top = newId('lyr');
      await hold.admit(ramNeed.snapshot(vm, this.d.snapshots.files(id).ram), 'vm');
      const ownRam = vm.ram.shared ? vm.ram.file : undefined;
      // Persisted with the state: a restart mid-snapshot knows what to roll back or forward.
      vm.snapshotPlan = { id, top, from: before, ...(ownRam ? { ownRam } : {}) };
      await this.#setState(vm, 'snapshotting');
      const files = this.d.snapshots.files(id);
      const frozen = vm.chain.at(-1) as string;
      const t0 = performance.now();
      const undo: Array<() => Promise<unknown>> = [];
      try {
        if (ownRam) {
          await this.d.snapshots.adoptRam(id, ownRam);
          undo.push(() => this.d.snapshots.returnRam(id, ownRam));
        } else {
          await this.d.snapshots.beginRam(id, vm.ram.file);
        }
        undo.push(() => this.d.snapshots.remove(id));
        this.#pendingLayers.add(top);
        undo.push(async () => {
          this.#pendingLayers.delete(top);
          await this.d.layers.remove(top);
        });
        await this.d.layers.createOverlay(top, frozen, vm.diskVirtualSize);
        const next: VmRecord = { ...vm, generation: vm.generation + 1, ram: { file: files.ram, shared: false }, chain: [...vm.chain, top] };
        const successor = await this.d.runtime.prepare(this.#spec(next, image), { autostart: resume, timeoutMs: this.d.limits.restoreTimeoutMs });
        undo.push(() => this.d.runtime.destroy(successor));

        const p0 = performance.now();
        if (before === 'running') {
          await this.d.runtime.pause(h);
          undo.push(() => this.d.runtime.resume(h));
        }
        const { stateBytes } = await this.d.runtime.saveState(h, files.state);
        const privateBytes = ownRam ? 0 : (await this.d.runtime.writePrivatePages(h, files.ram)).bytes;
        const { ramBytes } = await this.d.snapshots.commitRam(id);
        await this.d.runtime.load(successor, files.state, this.d.limits.restoreTimeoutMs);
        const pauseMs = round(performance.now() - p0);

        // The successor is the VM from here on; the old process goes.
        undo.length = 0;
        this.#pendingLayers.delete(top);
        Object.assign(vm, { handle: successor, pid: successor.pid, generation: next.generation, ram: next.ram, chain: next.chain });
        void successor.exited.then(() => this.#onExit(vm, successor));
        await this.d.runtime.destroy(h);
        await this.d.layers.freeze(frozen);
        const rec: SnapshotRecord = {
          info: {
            id,
            host: this.d.hostId,
            image: vm.image,
            vm: vm.id,
            ...(vm.lineage ? { parentSnapshot: vm.lineage } : {}),
            chainDepth: vm.chain.length - 1,
            profile: this.d.runtime.profile(vm.memMiB, vm.cpus, vm.imageId),
            createdAt: new Date().toISOString(),
            sizes: { stateBytes, ramBytes, diskBytes: (await fs.stat(this.d.layers.path(frozen))).size },
            timings: { pauseMs, totalMs: round(performance.now() - t0), privateBytes },
          },
          chain: vm.chain.slice(0, -1),
          kernelCmdline: vm.kernelCmdline,
          diskVirtualSize: vm.diskVirtualSize,
          ...(vm.apps?.length ? { apps: vm.apps.map((a) => ({ ...a })) } : {}),
        };
        vm.lineage = id;
        delete vm.snapshotPlan;
        this.#snaps.set(id, rec);
        await writeJsonAtomic(`${this.d.layout.snapshotDir(id)}/snapshot.json`, rec);
        await this.#setState(vm, resume ? 'running' : 'paused');
        await this.#dir.register('snap', id);
        await this.#dir.recordLineage(rec.info).catch((err: unknown) => this.#log.warn({ err, snapshot: id }, 'lineage record failed'));
        this.d.onChange?.();
        if (resume) await this.d.runtime.waitAgent(successor, this.d.limits.restoreTimeoutMs);
        await this.#flattenIfDeep(vm);
        this.#log.info({ vm: vmId, snapshot: id, ...rec.info.timings, ...rec.info.sizes }, 'snapshot taken');
        return rec;
      } catch (e) {
        if (undo.length === 0) {
          // Past the hand-over: the snapshot stands, the VM is whatever its successor is.
          throw e;
        }
        for (const step of undo.reverse()) await step().catch((err: unknown) => this.#log.warn({ err, vm: vmId }, 'snapshot rollback step failed'));
        delete vm.snapshotPlan;
        await this.#setState(vm, before).catch(() => undefined);
        throw e;
      }
    });
  }

  /** Past the configured depth, a VM's disk chain is flattened into its top layer (data unchanged). */
  async #flattenIfDeep(vm: VmRecord): Promise<void> {
    if (vm.chain.length <= this.d.limits.maxChainDepth) return;
    const base = vm.chain[0] as string;
    const t0 = performance.now();
    await this.d.runtime.flattenDisk(this.#handle(vm), this.d.layers.path(base), 10 * 60_000);
    const depth = vm.chain.length;
    vm.chain = [base, vm.chain.at(-1) as string];
    await this.#persist(vm);
    await this.#gcLayers();
    this.#log.info({ vm: vm.id, from: depth, to: 2, ms: round(performance.now() - t0) }, 'disk chain flattened');
  }

  async #restoreChild(snap: SnapshotRecord, image: Image, started: number, until: 'ready' | 'running', requestKey?: string, apps?: AppMount[]): Promise<VmInfo> {
    const files = this.d.snapshots.files(snap.info.id);
    const warm = this.#pool.take(snap.info.id);
    const id = warm?.id ?? newId('vm');
    const rec = this.#childRecord(id, snap, image);
    if (requestKey) rec.requestKey = requestKey;
    if (warm) {
      rec.mac = warm.mac;
      rec.chain.push(warm.top);
      rec.timings.warm = 1;
    }
    const info = await this.#make(rec, image, snap.chain.at(-1) as string, async (spec) => {
      let h = warm ? (warm.handle as VmHandle) : await this.d.runtime.prepare(spec, { autostart: true, timeoutMs: this.d.limits.restoreTimeoutMs });
      try {
        if (!warm) await this.d.runtime.load(h, files.state, this.d.limits.restoreTimeoutMs);
        else {
          const loaded = await loadWarm(this.d.runtime, h, spec, files.state, this.d.limits.restoreTimeoutMs, this.#log);
          h = loaded.handle;
          if (loaded.replaced) delete rec.timings.warm;
        }
        rec.timings.runningMs = round(performance.now() - started);
        // Before anyone reaches the child through hostd: its agent answers, and it is no longer its siblings' twin.
        const settle = Promise.all([
          this.d.runtime.waitAgent(h, this.d.limits.restoreTimeoutMs),
          giveIdentity(this.d.runtime, h, { vmId: id, hostname: id, mac: rec.mac, renewLease: this.d.runtime.bridged }, this.d.limits.agentTimeoutMs),
        ])
          // Apps asked for the children come after identity: each child mounts them as itself.
          .then(() => (apps?.length ? this.#apps.apply(rec, h, apps, () => this.#persist(rec)) : undefined))
          .then(() => {
            rec.timings.settledMs = round(performance.now() - started);
          });
        if (until === 'ready') {
          await settle;
          return h;
        }
        rec.settling = settle.catch(async (err: unknown) => {
          // Returned already: the child cannot be half-made, so it goes.
          this.#log.error({ err, vm: id }, 'child failed to settle after a fork that returned at running; destroying it');
          await this.destroy(id).catch(() => undefined);
          throw err;
        });
        rec.settling.catch(() => undefined);
        return h;
      } catch (e) {
        await this.d.runtime.destroy(h);
        throw e;
      }
    }, !!warm);
    rec.timings.readyMs = round(performance.now() - started);
    return { ...info, timings: rec.timings };
  }

  /** The record of a child of `snap`, restoring: its RAM, disk chain and app disks are the snapshot's. */
  #childRecord(id: string, snap: SnapshotRecord, image: Image): VmRecord {
    const rec = this.#newRecord(id, image, snap.info.profile.memMiB, snap.info.profile.cpus, 'restoring', {
      ram: { file: this.d.snapshots.files(snap.info.id).ram, shared: false },
      kernelCmdline: snap.kernelCmdline,
      chain: [...snap.chain],
      parentSnapshot: snap.info.id,
    });
    rec.lineage = snap.info.id;
    if (snap.apps?.length) rec.apps = snap.apps.map((a) => ({ ...a }));
    return rec;
  }

  /** A process for a future child of `snapId`: its own layer, the snapshot's RAM, waiting for state. */
  async #makeWarm(snapId: string): Promise<WarmChild> {
    const snap = this.#snap(snapId);
    const image = await this.d.images.get(snap.info.image);
    const rec = this.#childRecord(newId('vm'), snap, image);
    let handle: VmHandle | undefined;
    try {
      const top = await this.#newLayer(snap.chain.at(-1) as string, snap.diskVirtualSize, async (layer) => {
        rec.chain.push(layer);
        handle = await this.d.runtime.prepare(this.#spec(rec, image), { autostart: true, timeoutMs: this.d.limits.restoreTimeoutMs });
      });
      return { id: rec.id, mac: rec.mac, top, handle: handle as VmHandle, exited: (handle as VmHandle).exited };
    } catch (e) {
      await fs.rm(this.d.layout.vmDir(rec.id), { recursive: true, force: true });
      throw e;
    }
  }

  async #discardWarm(c: WarmChild): Promise<void> {
    await this.d.runtime.destroy(c.handle as VmHandle);
    await this.d.layers.remove(c.top);
    await fs.rm(this.d.layout.vmDir(c.id), { recursive: true, force: true });
  }

  /** Gives `rec` its own top layer on `backing`, starts it with `start`, and owns the clean-up if that fails. */
  async #make(rec: VmRecord, image: Image, backing: string, start: (spec: VmSpec) => Promise<VmHandle>, hasTop = false): Promise<VmInfo> {
    const t0 = performance.now();
    this.#vms.set(rec.id, rec);
    try {
      if (!hasTop) rec.chain.push(await this.#newLayer(backing, image.diskVirtualSize, async () => undefined));
      await this.#persist(rec);
      const handle = await start(this.#spec(rec, image));
      rec.handle = handle;
      rec.pid = handle.pid;
      void handle.exited.then(() => this.#onExit(rec, handle));
      rec.timings.startMs = round(performance.now() - t0);
      await this.#dir.register('vm', rec.id);
      await this.#setState(rec, 'running');
      this.d.onChange?.();
      this.#log.info({ vm: rec.id, ms: rec.timings.startMs, from: rec.parentSnapshot ?? rec.image }, 'vm running');
      return this.#info(rec);
    } catch (e) {
      await this.#teardown(rec).catch((err: unknown) => this.#log.warn({ err, vm: rec.id }, 'cleanup after failed start'));
      this.#vms.delete(rec.id);
      await this.#dir.unregister('vm', rec.id).catch(() => undefined);
      await this.#gcLayers();
      throw e;
    }
  }

  /** Makes a layer on `backing`, kept out of garbage collection until `use` is done with it. */
  async #newLayer(backing: string, size: number, use: (layer: string) => Promise<void>): Promise<string> {
    const layer = newId('lyr');
    this.#pendingLayers.add(layer);
    try {
      await this.d.layers.createOverlay(layer, backing, size);
      await use(layer);
      return layer;
    } catch (e) {
      await this.d.layers.remove(layer);
      throw e;
    } finally {
      this.#pendingLayers.delete(layer);
    }
  }

  async #teardown(vm: VmRecord): Promise<void> {
    if (vm.handle) await this.d.runtime.destroy(vm.handle);
    vm.handle = undefined;
    this.#gpus.release(vm.id);
    await removeVmFiles(vm, this.d.layout.vmDir(vm.id));
  }

  /** Removes every layer no VM or snapshot refers to. */
  async #gcLayers(): Promise<void> {
    const used = new Set<string>([...this.#pendingLayers, ...this.#pool.layers()]);
    for (const v of this.#vms.values()) for (const l of v.chain) used.add(l);
    for (const s of this.#snaps.values()) for (const l of s.chain) used.add(l);
    for (const l of await this.d.layers.list()) if (!used.has(l)) await this.d.layers.remove(l);
    const apps = new Set<string>();
    for (const r of [...this.#vms.values(), ...this.#snaps.values()]) for (const a of r.apps ?? []) apps.add(a.layer);
    for (const l of await this.d.appLayers.list()) if (!apps.has(l) && !this.#apps.isPinned(l)) await this.d.appLayers.remove(l);
  }

  #onExit(vm: VmRecord, handle: VmHandle): void {
    // A predecessor leaving after a snapshot is not the VM failing.
    if (vm.handle !== handle || vm.state === 'destroying' || vm.state === 'destroyed' || !this.#vms.has(vm.id)) return;
    this.#log.error({ vm: vm.id, state: vm.state, pid: handle.pid }, 'QEMU exited unexpectedly');
    markFailed(vm, `its QEMU process (pid ${handle.pid}) exited unexpectedly while it was ${vm.state}; see qemu.log and serial.log in its directory`);
    this.#gpus.release(vm.id);
    this.d.onChange?.();
    // Under the VM's lock, so a destroy meanwhile cannot be followed by this record written back.
    void this.#lock
      .run(vm.id, async () => {
        if (this.#vms.get(vm.id) !== vm || vm.state !== 'failed') return;
        await removeRuntimeFiles(vm, this.d.layout.vmDir(vm.id));
        await this.#persist(vm);
      })
      .catch((err: unknown) => this.#log.warn({ err, vm: vm.id }, 'failed VM cleanup'));
  }

  async #op(id: string, op: 'pause' | 'resume', fn: (vm: VmRecord, h: VmHandle) => Promise<void>): Promise<VmInfo> {
    // Outside the lock, as in #snapshotVm.
    await this.#vm(id).settling;
    return this.#lock.run(id, async () => {
      const vm = this.#vm(id);
      assertAllowed(id, vm.state, op);
      await fn(vm, this.#handle(vm));
      return this.#info(vm);
    });
  }

  #newRecord(
    id: string,
    image: Image,
    memMiB: number,
    cpus: number,
    state: VmState,
    rest: Pick<VmRecord, 'ram' | 'kernelCmdline' | 'chain'> & { parentSnapshot?: string },
  ): VmRecord {
    if (this.#vms.size >= this.d.limits.maxVms) throw new CapacityError(`host ${this.d.hostId} already runs ${this.#vms.size} VMs (limit ${this.d.limits.maxVms})`);
    return {
      generation: 0,
      mac: newMac(new Set([...this.#vms.values()].map((v) => v.mac))),
      id,
      image: image.name,
      imageId: image.id,
      memMiB,
      cpus,
      state,
      createdAt: new Date().toISOString(),
      diskVirtualSize: image.diskVirtualSize,
      timings: {},
      ...rest,
    };
  }

  #spec(rec: VmRecord, image: Image): VmSpec {
    return {
      id: rec.id,
      generation: rec.generation,
      mac: rec.mac,
      gpus: (rec.gpus ?? []).flatMap((g) => g.functions),
      appDisks: this.#apps.disks(rec.apps),
      image,
      memMiB: rec.memMiB,
      cpus: rec.cpus,
      kernelCmdline: rec.kernelCmdline,
      ram: rec.ram,
      diskFile: this.d.layers.path(rec.chain.at(-1) as string),
      runDir: this.d.layout.vmDir(rec.id),
    };
  }

  /**
   * The fork rule for GPUs: a VM holding a passed-through GPU is never snapshotted, so never
   * forked. QEMU cannot save a VFIO device's state (it blocks migration), and a child must not
   * share its parent's device. Refused before anything is touched; the VM keeps running.
   */
  #refuseGpuSnapshot(vmId: string, field: string): void {
    const vm = this.#vms.get(vmId);
    if (!vm?.gpus?.length) return;
    const fns = vm.gpus.flatMap((g) => g.functions).join(', ');
    throw new IncompatibleError(
      `VM ${vmId} holds passed-through GPU ${fns}: a VFIO device's state cannot be saved or cloned, so this VM cannot be snapshotted or forked. Fork a VM booted without --gpus, and boot GPU VMs from the image`,
      { field, gpus: fns },
    );
  }

  #checkProfile(p: MachineProfile, image: Image): void {
    const here = this.d.runtime.profile(p.memMiB, p.cpus, image.id);
    const diff = (Object.keys(p) as Array<keyof MachineProfile>).filter((k) => p[k] !== here[k]);
    if (diff.length > 0) {
      throw new IncompatibleError(
        `snapshot cannot be restored on host ${this.d.hostId}: ${diff.map((k) => `${k} is ${String(p[k])} in the snapshot, ${String(here[k])} here`).join('; ')}`,
        { fields: diff },
      );
    }
  }

  async #checkCapacity(perVmMiB: number, count: number): Promise<void> {
    if (this.#vms.size + count > this.d.limits.maxVms) {
      throw new CapacityError(`host ${this.d.hostId} cannot take ${count} more VMs: it runs ${this.#vms.size}, limit ${this.d.limits.maxVms}`, { field: 'count' });
    }
    const { availableMiB } = await meminfo();
    const need = perVmMiB * count;
    if (need > availableMiB - this.d.limits.reserveMiB) {
      throw new CapacityError(`host ${this.d.hostId} has ${availableMiB} MiB available (${this.d.limits.reserveMiB} reserved); ${count} VM(s) need about ${need} MiB`, {
        field: 'count',
      });
    }
  }

  async #setState(vm: VmRecord, to: VmState): Promise<void> {
    if (vm.state !== to) assertTransition(vm.id, vm.state, to);
    vm.state = to;
    await this.#persist(vm);
  }

  #persist(vm: VmRecord): Promise<void> {
    return writeJsonAtomic(this.d.layout.vmRecord(vm.id), recordForDisk(vm));
  }

  #vm(id: string): VmRecord {
    const vm = this.#vms.get(id);
    if (!vm) throw new NotFoundError('VM', id);
    return vm;
  }

  #snap(id: string): SnapshotRecord {
    const s = this.#snaps.get(id);
    if (!s) throw new NotFoundError('snapshot', id);
    return s;
  }

  #handle(vm: VmRecord): VmHandle {
    if (!vm.handle) throw new InvalidStateError(`VM ${vm.id} has no running process (${vm.state})`, { id: vm.id });
    return vm.handle;
  }

  #info(r: VmRecord): VmInfo {
    return vmInfo(r, this.d.hostId, this.d.runtime.accel);
  }
}

const round = (ms: number): number => Math.round(ms * 10) / 10;
