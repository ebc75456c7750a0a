import type { UploadResult } from '@forky/bus';
import type { Egress, NetworkEnforcement, SnapshotInfo, VmEvent } from '@forky/contract';
import type { Image } from '../images.js';
import type { SnapshotRecord, VmRecord } from './records.js';

// The VM runtime port (QEMU's side) has a file of its own; the engine imports every port from here.
export type { AppDisk, RunningProcess, SelfForkLine, SelfForkListener, VmHandle, VmRuntime, VmSpec } from './runtime-port.js';
/** Disk layers: a base per image, frozen layers owned by snapshots, a writable top per VM. */
export interface LayerStore {
  /** The layer for an image's disk, imported once. */
  importImage(image: Image): Promise<string>;
  /** Makes layer `id`, empty, on top of `backing`. */
  createOverlay(id: string, backing: string, virtualSize: number): Promise<void>;
  /** Makes a layer read-only: it now belongs to a snapshot. */
  freeze(layer: string): Promise<void>;
  path(layer: string): string;
  /** The layer file's size (what a snapshot reports as its disk). */
  bytes(layer: string): Promise<number>;
  remove(layer: string): Promise<void>;
  list(): Promise<string[]>;
}

/** App layers (packed directories) kept on this host by digest, fetched from the part store when missing. */
export interface AppLayerStore {
  /** Makes sure this host has the layer, fetching (and verifying) it if not; says what moved. */
  ensure(digest: string, timeoutMs: number): Promise<{ fetched: boolean; receivedBytes: number }>;
  path(digest: string): string;
  /** The layer's size in bytes, for an upload's length. */
  size(digest: string): Promise<number>;
  list(): Promise<string[]>;
  remove(digest: string): Promise<void>;
}

export interface SnapshotFiles {
  state: string;
  ram: string;
}

/** Where snapshots' device state and frozen RAM live. */
export interface SnapshotStore {
  files(id: string): SnapshotFiles;
  /** Starts the snapshot's RAM as a copy of `base` (a frozen file), to be completed; returns that file. */
  beginRam(id: string, base: string): Promise<string>;
  /** Takes `file` (a VM's own RAM, to be written no more once the VM stops) as the snapshot's RAM, by rename. */
  adoptRam(id: string, file: string): Promise<void>;
  /** Gives back a RAM file adopted by a snapshot that failed. */
  returnRam(id: string, file: string): Promise<void>;
  /** Freezes the snapshot's RAM once complete. */
  commitRam(id: string): Promise<{ ramBytes: number }>;
  /** Which of the snapshot's files are on this host (a fetch brings only the missing ones). */
  present(id: string): Promise<{ state: boolean; ram: boolean }>;
  remove(id: string): Promise<void>;
}

/** Tells the cluster which host holds a VM or snapshot, so any scheduler can route to it. */
export interface Directory {
  register(kind: 'vm' | 'snap', id: string): Promise<void>;
  unregister(kind: 'vm' | 'snap', id: string): Promise<void>;
  /** Records a snapshot in the cluster's lineage (its origin does; copies do not). */
  recordLineage(info: SnapshotInfo): Promise<void>;
  forgetLineage(id: string): Promise<void>;
  /**
   * Takes `name` for VM `vmId` in the cluster, or CONFLICT naming `name` if another VM has it.
   * `unregister('vm', id)` gives the VM's name back. Absent: names are unique on this host only.
   */
  claimName?(name: string, vmId: string): Promise<void>;
  /** Gives `name` back if `vmId` holds it. */
  releaseName?(name: string, vmId: string): Promise<void>;
  /** Whether VM `id` is in the cluster's locator (on any host); absent: unknown. */
  hasVm?(id: string): Promise<boolean>;
}

export type { UploadResult };

/** Content-addressed snapshot parts shared by every host (the JetStream object store). */
export interface PartStore {
  has(digest: string): Promise<boolean>;
  /** With `base`, a local part of the same lineage the store has: only pages it lacks are sent. */
  upload(file: string, known?: { digest: string; size: number }, base?: string): Promise<UploadResult>;
  /**
   * Fetches, verifies by digest, and only then puts the part at `dest` (via a temporary name).
   * With `base`, a local file of the same lineage: pages it has are copied, not fetched.
   */
  download(digest: string, dest: string, timeoutMs: number, base?: string, size?: number): Promise<{ receivedBytes: number }>;
  /** Resolves with the parts it names that are not whole in the store (to put again), if it checks. */
  putManifest(id: string, manifest: unknown): Promise<{ broken: string[] } | void>;
  getManifest(id: string): Promise<unknown>;
  /** The manifest of `id`, waiting up to `timeoutMs` for a publish under way (marked) to put it. */
  waitManifest(id: string, timeoutMs: number): Promise<unknown>;
  deleteManifest(id: string): Promise<void>;
  /** A publish of `id` is under way from `host`: fetches that find no manifest wait for it. */
  markPublishing(id: string, host: string): Promise<void>;
  /** The publish of `id` ended (with `failure`, the fetches waiting for it fail with it). */
  endPublishing(id: string, host: string, failure?: { code: string; message: string }): Promise<void>;
  /** Deletes parts no manifest refers to, if older than `graceMs` (a publish puts parts before its manifest). */
  sweep(graceMs: number): Promise<{ deleted: number; kept: number }>;
}

/**
 * The filesystem (a tmpfs) of the RAM directory. Its files grow as guests touch memory, so
 * admission weighs what they really take against what they may still take (see ram-admission.ts).
 */
export interface RamSpace {
  readonly dir: string;
  /** Bytes the filesystem can still give to new data. */
  freeBytes(): Promise<number>;
  /** Bytes `file` really takes (its allocated blocks, not its length); 0 if it does not exist. */
  allocatedBytes(file: string): Promise<number>;
  /**
   * Gives back a frozen RAM file's all-zero pages (holes that children's faults filled): its
   * content is unchanged, and copy-on-write mappings keep their own pages. Returns bytes freed.
   */
  reclaim(file: string): Promise<number>;
}

/** Where hostd keeps its records (VMs, snapshots, finished keyed requests) and the files a VM leaves. */
export interface RecordStore {
  saveVm(rec: VmRecord): Promise<void>;
  saveSnapshot(rec: SnapshotRecord): Promise<void>;
  /** A finished keyed request's reply: after a restart, a retry gets it instead of a second run. */
  saveRequest(key: string, op: string, result: unknown): Promise<void>;
  forgetRequest(key: string): Promise<void>;
  /** What a VM leaves once its process is gone: its own RAM file (if it owns one) and its directory. */
  removeVm(vm: Pick<VmRecord, 'id' | 'ram'>): Promise<void>;
  /** What only a live process uses: the VM's own RAM file and its sockets (its record and logs stay). */
  removeRuntime(vm: Pick<VmRecord, 'id' | 'ram'>): Promise<void>;
  /** Every record kept, for a restarted hostd; an unreadable one is left out (and swept as stray). */
  loadAll(): Promise<{ vms: VmRecord[]; snaps: SnapshotRecord[]; requests: Array<{ key: string; op: string; result: unknown }> }>;
  /** Removes VM and snapshot directories and RAM files that belong to none of `keep`; says how many. */
  sweep(keep: { vms: ReadonlySet<string>; snaps: ReadonlySet<string>; rams: ReadonlySet<string> }): Promise<number>;
  /** Whether a file hostd keeps (a RAM file, mid-snapshot) is there. */
  exists(file: string): Promise<boolean>;
}

/** What the host's kernel says of its memory. */
export interface HostStats {
  /** Logical CPUs. */
  cpus(): number;
  meminfo(): Promise<{ totalMiB: number; availableMiB: number }>;
  /** A process's proportional set size; 0 if it is gone. */
  pssMiB(pid: number): Promise<number>;
  /** Pages KSM shares beyond the first copy, as MiB; 0 where KSM is absent or off. */
  ksmSavedMiB(): Promise<number>;
}

/**
 * The per-VM egress filter (README "Network isolation"). nftables is one adapter (a chain per VM,
 * selected by the VM's cgroup, or by its TAP device); a fake is another. Every method is idempotent.
 */
export interface NetworkFilter {
  readonly enforcement: NetworkEnforcement;
  /**
   * Makes or replaces the VM's filter: before its first process starts, and when its policy
   * changes (from the next packet on). Throws a ForkyError (`BAD_REQUEST`) for a policy this host
   * cannot enforce, having changed nothing.
   */
  apply(vmId: string, egress: Egress): Promise<void>;
  /** The cgroup directory a process of the VM is started in (see VmSpec.net), if the filter works by cgroup. */
  scope(vmId: string): string | undefined;
  /** Puts a TAP device of the VM behind its filter, frames only from the VM's own MAC (made after `apply`, before QEMU opens it). */
  bindDevice(vmId: string, device: string, mac: string): Promise<void>;
  /** Forgets a TAP device (it is being removed). */
  unbindDevice(device: string): Promise<void>;
  /** Whether process `pid` sends its packets through the VM's filter (a VM taken back after a restart may predate it). */
  holds(vmId: string, pid: number): Promise<boolean>;
  /** Packets the VM's policy refused since its filter was made; undefined where not counted. */
  refused(vmId: string): Promise<number | undefined>;
  /** Removes the VM's filter once none of its processes is left. */
  remove(vmId: string): Promise<void>;
  /** Removes the filters of VMs not in `keep` (a hostd that died left them); says how many. */
  sweep(keep: ReadonlySet<string>): Promise<number>;
}

/**
 * Where VM and snapshot events go (STREAMS.md "Events"). Never throws and never blocks: an
 * operation does not wait for, or fail by, an event that could not be sent.
 */
export interface EventSink {
  publish(e: VmEvent): void;
}
