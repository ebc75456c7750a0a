import type { Accel, ExecResult, MachineProfile } from '@forky/contract';
import type { Image } from '../images.js';

/** Everything the runtime needs to start one VM; paths are already checked by the layout. */
export interface VmSpec {
  id: string;
  image: Image;
  memMiB: number;
  cpus: number;
  /** Kernel command line; a restored VM must get its snapshot's line verbatim. */
  kernelCmdline: string;
  /** RAM backing file. `shared`: the VM owns it (MAP_SHARED); otherwise it is a snapshot's, mapped copy-on-write. */
  ram: { file: string; shared: boolean };
  /** The VM's writable top disk layer. */
  diskFile: string;
  /** Directory for sockets and logs. */
  runDir: string;
}

/** A running QEMU process as the runtime tracks it; opaque to the engine. */
export interface VmHandle {
  readonly pid: number;
  /** Resolves when the process has exited, for any reason. */
  readonly exited: Promise<void>;
}

export interface FreezeResult {
  stateBytes: number;
}

/** The port to the hypervisor. QEMU is one adapter; a fake is another. */
export interface VmRuntime {
  readonly accel: Accel;
  readonly qemuVersion: string;
  /** The profile a VM of this size gets here; a snapshot restores only where it matches. */
  profile(memMiB: number, cpus: number, imageId: string): MachineProfile;
  /** Boots and returns once the guest agent answers. */
  boot(spec: VmSpec, timeoutMs: number): Promise<VmHandle>;
  /** Starts a VM from saved device state and returns once its guest agent answers. */
  restore(spec: VmSpec, stateFile: string, timeoutMs: number): Promise<VmHandle>;
  pause(vm: VmHandle): Promise<void>;
  resume(vm: VmHandle): Promise<void>;
  /** Moves a paused VM's disk writes to `newDiskFile`, whose backing is the current top (now read-only). */
  switchDisk(vm: VmHandle, newDiskFile: string): Promise<void>;
  /** Saves a paused VM's device state (not its shared RAM) to `stateFile`. */
  saveState(vm: VmHandle, stateFile: string): Promise<FreezeResult>;
  exec(vm: VmHandle, cmd: readonly string[], opts: { input?: string; timeoutMs: number }): Promise<ExecResult>;
  /** Stops the process (gracefully, then by force) and releases its connections. Idempotent. */
  destroy(vm: VmHandle): Promise<void>;
}

/** Disk layers: a base per image, frozen layers owned by snapshots, a writable top per VM. */
export interface LayerStore {
  /** The layer for an image's disk, imported once. */
  importImage(image: Image): Promise<string>;
  /** Makes layer `id`, empty, on top of `backing`. */
  createOverlay(id: string, backing: string, virtualSize: number): Promise<void>;
  /** Makes a layer read-only: it now belongs to a snapshot. */
  freeze(layer: string): Promise<void>;
  path(layer: string): string;
  remove(layer: string): Promise<void>;
  list(): Promise<string[]>;
}

export interface SnapshotFiles {
  state: string;
  ram: string;
}

/** Where snapshots' device state and frozen RAM live. */
export interface SnapshotStore {
  /** Takes ownership of `stateFile` (moved) and a private copy of `ramFile`. */
  create(id: string, stateFile: string, ramFile: string): Promise<{ ramBytes: number }>;
  files(id: string): SnapshotFiles;
  /** A scratch path for a state file about to be saved. */
  scratch(id: string): string;
  remove(id: string): Promise<void>;
}

/** Tells the cluster which host holds a VM or snapshot, so any scheduler can route to it. */
export interface Directory {
  register(kind: 'vm' | 'snap', id: string): Promise<void>;
  unregister(kind: 'vm' | 'snap', id: string): Promise<void>;
}

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes that went on the wire (0 when the part was already there). */
  sentBytes: number;
  skipped: boolean;
}

/** Content-addressed snapshot parts shared by every host (the JetStream object store). */
export interface PartStore {
  has(digest: string): Promise<boolean>;
  upload(file: string, known?: { digest: string; size: number }): Promise<UploadResult>;
  /** Fetches, verifies by digest, and only then puts the part at `dest` (via a temporary name). */
  download(digest: string, dest: string, timeoutMs: number): Promise<{ receivedBytes: number }>;
  putManifest(id: string, manifest: unknown): Promise<void>;
  getManifest(id: string): Promise<unknown>;
  deleteManifest(id: string): Promise<void>;
  /** Deletes parts no manifest refers to, if older than `graceMs` (a publish puts parts before its manifest). */
  sweep(graceMs: number): Promise<{ deleted: number; kept: number }>;
}
