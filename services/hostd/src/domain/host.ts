import { InvalidStateError, KeyedMutex, NotFoundError, newId, type Logger } from '@forky/base';
import type { Egress, VmInfo, VmState } from '@forky/contract';
import type { Image } from '../images.js';
import type { EngineDeps } from './deps.js';
import type { Directory, VmHandle, VmSpec } from './ports.js';
import { RamAdmission, UNLIMITED_RAM, admitVmRecord, knownRamFiles, type AdmissionView } from './admission.js';
import { AppMounter } from './apps.js';
import { GpuAllocator } from './gpus.js';
import { newMac } from './identity.js';
import { assertTransition } from './state.js';
import { egressOf, markFailed, vmInfo, type SnapshotRecord, type VmRecord } from './records.js';
import type { Rollback } from './rollback.js';
import { WarmPool, type WarmChild } from './warm-pool.js';
import { NO_EVENTS, VmEvents, VmTable } from './events.js';
import { Lifetimes, type DueHandler } from './lifetimes.js';
import { rootOf } from './self-fork-tree.js';

const NO_DIRECTORY: Directory = {
  register: async () => undefined,
  unregister: async () => undefined,
  recordLineage: async () => undefined,
  forgetLineage: async () => undefined,
};

/** How the warm pool's processes are made and discarded (ops/warm.ts). */
export interface WarmMaker {
  make(host: Host, snapId: string): Promise<WarmChild<VmHandle>>;
  discard(host: Host, c: WarmChild<VmHandle>): Promise<void>;
}

/**
 * The host context every operation (ops/*) runs over: what this host holds (VMs, snapshots), the
 * locks and helpers they share, and `changed()`, which the facade runs once per operation.
 */
export class Host implements AdmissionView {
  /** Said of VMs as their records change (events.ts): one place, not every operation. */
  readonly events: VmEvents;
  readonly vms: Map<string, VmRecord> = new VmTable((rec) => this.events.gone(rec));
  readonly snaps = new Map<string, SnapshotRecord>();
  /** Forks in flight per snapshot: a snapshot in use cannot be deleted. */
  readonly snapUsers = new Map<string, number>();
  /** Layers being made, not yet in any chain: garbage collection leaves them alone. */
  readonly pendingLayers = new Set<string>();
  /** Every operation on a VM or snapshot runs under its id's lock. */
  readonly lock = new KeyedMutex();
  readonly log: Logger;
  readonly dir: Directory;
  readonly gpus: GpuAllocator;
  readonly apps: AppMounter;
  readonly ram: RamAdmission;
  readonly pool: WarmPool<VmHandle>;
  /** Every VM's TTL and idle rule (lifetimes.ts); armed again whenever a record is written. */
  readonly lifetimes: Lifetimes;
  #closed = false;

  constructor(
    readonly d: EngineDeps,
    warm: WarmMaker,
    /** What is done when a VM's TTL or idle time is up (ops/lifecycle.ts, through the engine). */
    onDue: (host: Host, ...a: Parameters<DueHandler>) => ReturnType<DueHandler>,
  ) {
    this.log = d.logger.child({ component: 'engine' });
    this.events = new VmEvents(d.events ?? NO_EVENTS, d.hostId, this.log.child({ component: 'events' }));
    this.gpus = d.gpus ?? new GpuAllocator([], d.hostId);
    this.apps = new AppMounter(d.runtime, d.appLayers, this.log.child({ component: 'apps' }), {
      fetchMs: 10 * 60_000,
      guestMs: Math.max(30_000, d.limits.agentTimeoutMs),
    });
    this.dir = d.directory ?? NO_DIRECTORY;
    const ramFiles = () => knownRamFiles(this.vms.values(), this.snaps.values(), (id) => d.snapshots.files(id).ram);
    this.ram = new RamAdmission(d.ramSpace ?? UNLIMITED_RAM, d.hostId, ramFiles, this.log.child({ component: 'ram-admission' }));
    this.pool = new WarmPool(
      d.pool ?? { size: 0, maxSnapshots: 0 },
      (snap) => warm.make(this, snap),
      (c) => warm.discard(this, c),
      this.log.child({ component: 'warm-pool' }),
    );
    this.lifetimes = new Lifetimes(this.vms, (...a) => onDue(this, ...a), this.log);
  }

  // ---- what admission.ts looks at
  get hostId(): string {
    return this.d.hostId;
  }
  get runtime(): EngineDeps['runtime'] {
    return this.d.runtime;
  }
  get stats(): EngineDeps['stats'] {
    return this.d.stats;
  }
  get limits(): EngineDeps['limits'] {
    return this.d.limits;
  }
  vmCount(): number {
    return this.vms.size;
  }
  gpusOf(vmId: string): Array<{ functions: string[] }> | undefined {
    return this.vms.get(vmId)?.gpus;
  }

  // ---- look-ups
  vm(id: string): VmRecord {
    const vm = this.vms.get(id);
    if (!vm) throw new NotFoundError('VM', id);
    return vm;
  }

  snap(id: string): SnapshotRecord {
    const s = this.snaps.get(id);
    if (!s) throw new NotFoundError('snapshot', id);
    return s;
  }

  handle(vm: VmRecord): VmHandle {
    if (!vm.handle) throw new InvalidStateError(`VM ${vm.id} has no running process (${vm.state})`, { id: vm.id });
    return vm.handle;
  }

  info(r: VmRecord): VmInfo {
    return vmInfo(r, this.d.hostId, this.d.runtime.accel, this.d.network.enforcement);
  }

  // ---- records
  async persist(vm: VmRecord): Promise<void> {
    await this.d.records.saveVm(vm);
    this.events.persisted(vm);
    // Its deadlines may have moved (a birth, a state, an extend).
    this.lifetimes.arm();
  }

  async setState(vm: VmRecord, to: VmState): Promise<void> {
    const from = vm.state;
    if (from !== to) assertTransition(vm.id, from, to);
    vm.state = to;
    if (to === 'running' && from !== 'running') {
      // Running again (ready, resumed, past a snapshot): not paused by anyone, and its idle time starts over.
      delete vm.pausedBy;
      vm.lastActivityAt = Date.now();
    }
    try {
      await this.persist(vm);
    } finally {
      // What hostd serves from now on, whether or not the record made it to disk.
      this.events.state(vm, from, to);
    }
  }

  newRecord(
    id: string,
    image: Image,
    memMiB: number,
    cpus: number,
    state: VmState,
    rest: Pick<VmRecord, 'ram' | 'kernelCmdline' | 'chain'> & { parentSnapshot?: string },
  ): VmRecord {
    admitVmRecord(this);
    const rec: VmRecord = {
      generation: 0,
      mac: newMac(new Set([...this.vms.values()].map((v) => v.mac))),
      id,
      image: image.name,
      imageId: image.id,
      memMiB,
      cpus,
      state,
      createdAt: new Date().toISOString(),
      lastActivityAt: Date.now(),
      diskVirtualSize: image.diskVirtualSize,
      timings: {},
      ...rest,
    };
    this.events.made(rec);
    return rec;
  }

  /** The record of a child of `snap`, restoring: its RAM, disk chain and app disks are the snapshot's. */
  childRecord(id: string, snap: SnapshotRecord, image: Image): VmRecord {
    const rec = this.newRecord(id, image, snap.info.profile.memMiB, snap.info.profile.cpus, 'restoring', {
      ram: { file: this.d.snapshots.files(snap.info.id).ram, shared: false },
      kernelCmdline: snap.kernelCmdline,
      chain: [...snap.chain],
      parentSnapshot: snap.info.id,
    });
    // The parent's disk size (a `diskGiB` boot's), not the image's: the restored guest knows that device.
    rec.diskVirtualSize = snap.diskVirtualSize;
    rec.lineage = snap.info.id;
    rec.egress = egressOf(snap);
    // A self-fork's child joins its parent's tree instead (ops/child.ts).
    if (snap.selfFork) rec.selfFork = rootOf(id, snap.selfFork);
    if (snap.apps?.length) rec.apps = snap.apps.map((a) => ({ ...a }));
    return rec;
  }

  spec(rec: VmRecord, image: Image): VmSpec {
    return {
      id: rec.id,
      generation: rec.generation,
      mac: rec.mac,
      gpus: (rec.gpus ?? []).flatMap((g) => g.functions),
      appDisks: this.apps.disks(rec.apps),
      image,
      memMiB: rec.memMiB,
      cpus: rec.cpus,
      kernelCmdline: rec.kernelCmdline,
      ram: rec.ram,
      diskFile: this.d.layers.path(rec.chain.at(-1) as string),
      runDir: this.d.layout.vmDir(rec.id),
      net: { scope: this.d.network.scope(rec.id), restrict: this.d.network.enforcement === 'qemu-restrict' },
    };
  }

  /** A boot that names no policy: `internet`, or `none` on a host without a filter (it could enforce nothing else). */
  defaultEgress(): Egress {
    return this.d.network.enforcement === 'nftables' ? 'internet' : 'none';
  }

  // ---- shared steps
  /** Makes the VM's egress filter before its first process starts; removed on rollback (after that process is stopped). */
  async filterNetwork(rb: Rollback, vmId: string, egress: Egress): Promise<void> {
    await this.d.network.apply(vmId, egress);
    rb.push('remove the network filter', () => this.d.network.remove(vmId));
  }

  /** Makes a layer on `backing`, kept out of garbage collection until `use` is done with it; removed on rollback. */
  async newLayer(rb: Rollback, backing: string, size: number, use?: (layer: string) => Promise<void>): Promise<string> {
    const layer = newId('lyr');
    this.pendingLayers.add(layer);
    rb.push(`remove layer ${layer}`, () => this.d.layers.remove(layer));
    try {
      await this.d.layers.createOverlay(layer, backing, size);
      await use?.(layer);
      return layer;
    } finally {
      this.pendingLayers.delete(layer);
    }
  }

  /** Stops a VM's process and removes what it leaves on disk; its GPUs go back. */
  async teardown(vm: VmRecord): Promise<void> {
    if (vm.handle) await this.d.runtime.destroy(vm.handle);
    vm.handle = undefined;
    this.gpus.release(vm.id);
    await this.d.network.remove(vm.id);
    await this.d.records.removeVm(vm);
  }

  /** Watches `handle`, the VM's process: if it exits while it is the VM's, the VM is failed (not once closed: a successor may drive it). */
  watch(vm: VmRecord, handle: VmHandle): void {
    void handle.exited.then(() => this.#closed || this.#onExit(vm, handle));
  }

  /** The engine closed: no more timers, and its VMs' processes are no longer its to watch. */
  close(): void {
    this.#closed = true;
    this.lifetimes.close();
  }

  /**
   * The set of VMs or snapshots changed: a heartbeat goes out soon, and layers nothing refers to
   * any more are collected. Run by the facade once per operation (and when a process dies).
   */
  async changed(): Promise<void> {
    this.d.onChange?.();
    await this.#gcLayers().catch((err: unknown) => this.log.warn({ err }, 'layer collection failed'));
  }

  async #gcLayers(): Promise<void> {
    const used = new Set<string>([...this.pendingLayers, ...this.pool.layers()]);
    for (const v of this.vms.values()) for (const l of v.chain) used.add(l);
    for (const s of this.snaps.values()) for (const l of s.chain) used.add(l);
    for (const l of await this.d.layers.list()) if (!used.has(l)) await this.d.layers.remove(l);
    const apps = new Set<string>();
    for (const r of [...this.vms.values(), ...this.snaps.values()]) for (const a of r.apps ?? []) apps.add(a.layer);
    for (const l of await this.d.appLayers.list()) if (!apps.has(l) && !this.apps.isPinned(l)) await this.d.appLayers.remove(l);
  }

  #onExit(vm: VmRecord, handle: VmHandle): void {
    // A predecessor leaving after a snapshot is not the VM failing.
    if (vm.handle !== handle || vm.state === 'destroying' || vm.state === 'destroyed' || !this.vms.has(vm.id)) return;
    this.log.error({ vm: vm.id, state: vm.state, pid: handle.pid }, 'QEMU exited unexpectedly');
    markFailed(
      vm,
      `its QEMU process (pid ${handle.pid}) exited unexpectedly while it was ${vm.state}; see qemu.log and serial.log in its directory`,
    );
    this.gpus.release(vm.id);
    this.events.failed(vm);
    this.d.onChange?.();
    // Under the VM's lock, so a destroy meanwhile cannot be followed by this record written back.
    void this.lock
      .run(vm.id, async () => {
        if (this.vms.get(vm.id) !== vm || vm.state !== 'failed') return;
        await this.d.records.removeRuntime(vm);
        await this.persist(vm);
      })
      .catch((err: unknown) => this.log.warn({ err, vm: vm.id }, 'failed VM cleanup'));
  }
}

export const round = (ms: number): number => Math.round(ms * 10) / 10;
