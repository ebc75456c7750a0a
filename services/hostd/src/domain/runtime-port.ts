import type { GuestSession } from '@forky/agent';
import type { Accel, ExecResult, MachineProfile } from '@forky/contract';
import type { Image } from '../images.js';

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
