import type { UploadResult } from '@forky/bus';
import type { Accel, Egress, ExecResult, MachineProfile, NetworkEnforcement, SnapshotInfo, VmEvent } from '@forky/contract';
import type { GuestSession } from '@forky/agent';
import type { Image } from '../images.js';
import type { SnapshotRecord, VmRecord } from './records.js';

/** Everything the runtime needs to start one VM process; paths are already checked by the layout. */
export interface VmSpec {
  id: string;
  /** Which process of this VM this is: a snapshot hands a VM over to a successor process. */
  generation: number;
  image: Image;
  memMiB: number;
  cpus: number;
  /** Kernel command line; a restored VM must get its snapshot's line verbatim. */
  kernelCmdline: string;
  /** RAM backing file. `shared`: the VM owns it (MAP_SHARED); otherwise it is a snapshot's, mapped copy-on-write. */
  ram: { file: string; shared: boolean };
  /** The VM's writable top disk layer. */
  diskFile: string;
  /** The NIC's MAC address. */
  mac: string;
  /** Host PCI functions passed through with VFIO. */
  gpus: string[];
  /** App layers' read-only disks, each at its own PCI slot. */
  appDisks: AppDisk[];
  /** Directory for sockets and logs. */
  runDir: string;
  /**
   * Where the VM's packets are filtered. `scope`: the cgroup directory its processes are started
   * in (the filter knows every packet of a process there as this VM's). `restrict`: the host has
   * no filter, so QEMU gives the guest no network at all (user-mode `restrict=on`).
   */
  net: { scope?: string; restrict: boolean };
}

/**
 * A read-only app layer as a disk. Its slot fixes its PCI address, so a successor or a child
 * started with it on the command line matches the device state of a VM it was hot-plugged into.
 */
export interface AppDisk {
  slot: number;
  file: string;
  /** What the guest finds it by (/sys/block/vdX/serial); at most 20 characters. */
  serial: string;
}

/** A running QEMU process as the runtime tracks it; opaque to the engine. */
export interface VmHandle {
  readonly pid: number;
  /** Resolves when the process has exited, for any reason. */
  readonly exited: Promise<void>;
}

/** A VM process found running on this host (after a restart), whoever started it. */
export interface RunningProcess {
  pid: number;
  vmId: string;
  generation: number;
  kill(): Promise<void>;
}

/**
 * The port to the hypervisor. QEMU is one adapter; a fake is another. `H` is the adapter's own
 * handle: the engine holds it opaquely, the adapter gets its own type back without a cast.
 */
export interface VmRuntime<H extends VmHandle = VmHandle> {
  readonly accel: Accel;
  readonly qemuVersion: string;
  /** VMs sit on a shared network (TAP on a bridge): a child needs a lease of its own. */
  readonly bridged: boolean;
  /** The profile a VM of this size gets here; a snapshot restores only where it matches. */
  profile(memMiB: number, cpus: number, imageId: string): MachineProfile;
  /** Boots and returns once the guest agent answers. */
  boot(spec: VmSpec, timeoutMs: number): Promise<H>;
  /**
   * Starts a process that waits for saved device state; its disks stay closed to writes until then.
   * `autostart`: it runs as soon as the state is loaded; otherwise it stays paused.
   */
  prepare(spec: VmSpec, opts: { autostart: boolean; timeoutMs: number }): Promise<H>;
  /** Loads device state into a prepared VM; returns once it is loaded (and running, if it autostarts). */
  load(vm: H, stateFile: string, timeoutMs: number): Promise<void>;
  /** Waits until the guest agent of a running VM answers. */
  waitAgent(vm: H, timeoutMs: number): Promise<void>;
  pause(vm: H): Promise<void>;
  /** Continues a paused VM (taking its disks back if a save let go of them). */
  resume(vm: H): Promise<void>;
  /** Saves a paused VM's device state (never its RAM) to `stateFile` and lets go of its disks for a successor. */
  saveState(vm: H, stateFile: string): Promise<{ stateBytes: number }>;
  /**
   * Writes the pages a copy-on-write VM has made its own into `file` (a copy of its RAM file), at their offsets.
   * `precopy`: the VM still runs; where the runtime tracks its writes, the next call copies only those (else this does nothing).
   */
  writePrivatePages(vm: H, file: string, opts?: { precopy?: boolean }): Promise<{ bytes: number }>;
  /** Copies into the VM's top layer what the layers above `baseFile` hold, so its chain is base + top. */
  flattenDisk(vm: H, baseFile: string, timeoutMs: number): Promise<void>;
  exec(vm: H, cmd: readonly string[], opts: { input?: string; timeoutMs: number }): Promise<ExecResult>;
  /** The VM process's guest agent session (streams and calls inside the guest), made once and again if it closed. */
  guest(vm: H): Promise<GuestSession>;
  /**
   * Holds back new guest requests on the VM process's open agent session, if it has one, until
   * every one sent has its answer (at most `timeoutMs`): a snapshot then holds no request its
   * children would carry out again. The returned function lets them go.
   */
  quiesceGuest(vm: H, timeoutMs: number): Promise<() => void>;
  /** Sends one line to the guest's control program and returns its one-line answer. */
  control(vm: H, line: string, timeoutMs: number): Promise<string>;
  /** Takes over a process an earlier hostd started; `status` is QEMU's run state (`running`, `paused`, …). */
  attach(spec: VmSpec, pid: number, timeoutMs: number): Promise<{ handle: H; status: string }>;
  /** Every VM process of this host's data directory, ours or left by an earlier hostd. */
  processes(vmsDir: string): Promise<RunningProcess[]>;
  /** Hot-plugs a read-only app disk into a running VM; returns once the device is added. */
  attachDisk(vm: H, disk: AppDisk, timeoutMs: number): Promise<void>;
  /** Unplugs the app disk at `slot`; returns once the guest has let it go and its file is closed. */
  detachDisk(vm: H, slot: number, timeoutMs: number): Promise<void>;
  /** Stops the process (gracefully, then by force) and releases its connections. Idempotent. */
  destroy(vm: H): Promise<void>;
  /** Releases what the runtime holds for this hostd process (guest agent sessions); VMs keep running. */
  close(): Promise<void>;
  /**
   * Where the lines every VM process sends on its self-fork port (org.forky.fork.0) go: set once,
   * before any VM is made. A process's next line is read only once `listener` has settled.
   */
  onSelfFork?(listener: SelfForkListener): void;
  /** Writes one line (no newline) to the process's self-fork port. */
  selfForkReply?(vm: H, line: string): Promise<void>;
}

/** One line from a guest's self-fork port, bounded by the adapter: a line over the limit is only `tooLong`. */
export type SelfForkLine = { line: string } | { tooLong: true };
/** Gets each line of VM `vm.id`'s process `vm.generation`. */
export type SelfForkListener = (vm: { id: string; generation: number }, line: SelfForkLine) => Promise<void>;

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
