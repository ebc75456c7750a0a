import { CapacityError, ForkyError, ValidationError, type Logger } from '@forky/base';
import { MAX_APPS, type AppMount } from '@forky/contract';
import type { AppDisk, AppLayerStore, VmHandle, VmRuntime } from './ports.js';

/** An app disk of a VM: its slot, its layer, and where the guest mounts it (none once replaced, until unplugged). */
export interface AppDevice {
  slot: number;
  layer: string;
  mount?: string;
}

/** Slots for app disks: twice the mounts, so a layer can be replaced while the old one is still plugged. */
export const APP_SLOTS = MAX_APPS * 2;
/** The guest scripts (images/tiny/app-mount) that mount a layer under an overlay and let one go. */
const MOUNT = '/etc/forky/app-mount';
const RELEASE = '/etc/forky/app-release';

export const appSerial = (d: Pick<AppDevice, 'slot' | 'layer'>): string => `app${d.slot}-${d.layer.slice(0, 14)}`;

/** What a VM shows of its apps: the mounted layers, by mount point. */
export function mountedApps(devices: readonly AppDevice[] | undefined): AppMount[] | undefined {
  const m = (devices ?? []).flatMap((d) => (d.mount ? [{ layer: d.layer, mount: d.mount }] : []));
  return m.length > 0 ? m.sort((a, b) => a.mount.localeCompare(b.mount)) : undefined;
}

/** The devices of a VM booting with `apps`: on its command line, a slot each in order. */
export function bootDevices(apps: readonly AppMount[]): AppDevice[] {
  return apps.map((a, slot) => ({ slot, layer: a.layer, mount: a.mount }));
}

export interface AppTarget {
  id: string;
  apps?: AppDevice[];
}

/**
 * Puts app layers into VMs: on the command line of a VM being started, or hot-plugged into a
 * running one, then mounted by the guest under an overlay whose upper half is on the VM's own
 * disk. That is why the transport forks: a plain virtio disk migrates (9p and virtiofs block
 * migration in QEMU 7.2), the guest's mount table and page cache are in its RAM, and its writes
 * are on its disk, both of which children get copy-on-write.
 */
export class AppMounter {
  /** Layers fetched for an operation not yet in any record: garbage collection leaves them alone. */
  readonly #pinned = new Map<string, number>();

  constructor(
    private readonly runtime: VmRuntime,
    private readonly layers: AppLayerStore,
    private readonly log: Logger,
    private readonly timeouts: { fetchMs: number; guestMs: number },
  ) {}

  /** Keeps `layers` from garbage collection until the returned function is called. */
  pin(layers: readonly string[]): () => void {
    for (const l of layers) this.#pinned.set(l, (this.#pinned.get(l) ?? 0) + 1);
    return () => {
      for (const l of layers) {
        const n = (this.#pinned.get(l) ?? 1) - 1;
        if (n > 0) this.#pinned.set(l, n);
        else this.#pinned.delete(l);
      }
    };
  }

  isPinned(layer: string): boolean {
    return this.#pinned.has(layer);
  }

  /** The disks of `devices`, for a command line. */
  disks(devices: readonly AppDevice[] | undefined): AppDisk[] {
    return (devices ?? []).map((d) => this.#disk(d));
  }

  #disk(d: AppDevice): AppDisk {
    return { slot: d.slot, file: this.layers.path(d.layer), serial: appSerial(d) };
  }

  /** Mounts, in a guest that has just booted, the apps its command line gave it. */
  async mountAll(vm: AppTarget, h: VmHandle): Promise<void> {
    for (const d of vm.apps ?? []) if (d.mount) await this.#guest(vm.id, h, [MOUNT, appSerial(d), d.mount]);
  }

  /**
   * Mounts `wanted` in a running VM: a new mount point gets the layer, an existing one gets it in
   * place of its old layer (the VM's writes there stay on top). Everything that can be refused is
   * refused before the VM is touched. `persist` is called whenever the devices change, so a
   * restart finds what is plugged in.
   */
  async apply(vm: AppTarget, h: VmHandle, wanted: readonly AppMount[], persist: () => Promise<void>): Promise<void> {
    const { todo, free } = this.plan(vm, wanted);
    const unpin = await this.prefetch(todo);
    try {
      for (const [i, w] of todo.entries()) await this.#replace(vm, h, { slot: free[i] as number, layer: w.layer }, w.mount, persist);
    } finally {
      unpin();
    }
  }

  /** Plugs `dev` in, mounts it at `mount`, and lets go of the layer that was there. */
  async #replace(vm: AppTarget, h: VmHandle, dev: AppDevice, mount: string, persist: () => Promise<void>): Promise<void> {
    const devices = (vm.apps ??= []);
    const disk = this.#disk(dev);
    await this.runtime.attachDisk(h, disk, this.timeouts.guestMs);
    devices.push(dev);
    await persist();
    try {
      await this.#guest(vm.id, h, [MOUNT, disk.serial, mount]);
    } catch (e) {
      await this.#unplug(vm, h, dev, persist);
      throw e;
    }
    const old = devices.find((d) => d !== dev && d.mount === mount);
    dev.mount = mount;
    if (old) delete old.mount;
    await persist();
    if (old) await this.#unplug(vm, h, old, persist);
  }

  /**
   * What `apply` would plug in, and the slots it would use; refuses (naming `apps`) what cannot
   * be done, so a caller can check before it changes anything.
   */
  plan(vm: AppTarget, wanted: readonly AppMount[]): { todo: AppMount[]; free: number[] } {
    const devices = vm.apps ?? [];
    const todo = wanted.filter((w) => !devices.some((d) => d.mount === w.mount && d.layer === w.layer));
    const mounts = new Set([...devices.flatMap((d) => (d.mount ? [d.mount] : [])), ...wanted.map((w) => w.mount)]);
    if (mounts.size > MAX_APPS)
      throw new ValidationError(`${vm.id} would have ${mounts.size} app mounts; at most ${MAX_APPS}`, { field: 'apps' });
    const free = Array.from({ length: APP_SLOTS }, (_, i) => i).filter((s) => !devices.some((d) => d.slot === s));
    if (free.length < todo.length) {
      throw new CapacityError(`${vm.id} has ${free.length} free app slot(s) (old layers still plugged); ${todo.length} needed`, {
        field: 'apps',
      });
    }
    return { todo, free };
  }

  /** Fetches `apps`' layers now and keeps them until the returned function is called. */
  async prefetch(apps: readonly AppMount[]): Promise<() => void> {
    const unpin = this.pin(apps.map((a) => a.layer));
    try {
      await Promise.all(apps.map((a) => this.layers.ensure(a.layer, this.timeouts.fetchMs)));
      return unpin;
    } catch (e) {
      unpin();
      throw e;
    }
  }

  /** Lets an unmounted layer go: the guest unmounts it, QEMU unplugs it. One that will not go stays plugged, unmounted. */
  async #unplug(vm: AppTarget, h: VmHandle, dev: AppDevice, persist: () => Promise<void>): Promise<void> {
    try {
      await this.#guest(vm.id, h, [RELEASE, appSerial(dev)]);
      await this.runtime.detachDisk(h, dev.slot, this.timeouts.guestMs);
      vm.apps = (vm.apps ?? []).filter((d) => d !== dev);
      await persist();
    } catch (err) {
      this.log.warn(
        { err, vm: vm.id, slot: dev.slot, layer: dev.layer },
        'an old app layer could not be unplugged; it stays plugged, unmounted',
      );
    }
  }

  async #guest(vmId: string, h: VmHandle, cmd: string[]): Promise<void> {
    const r = await this.runtime.exec(h, cmd, { timeoutMs: this.timeouts.guestMs });
    if (r.exitCode !== 0) {
      throw new ForkyError(
        'INTERNAL',
        `VM ${vmId}: ${cmd.join(' ')} failed (exit ${r.exitCode}): ${(r.stderr || r.stdout).trim().slice(0, 500)}`,
      );
    }
  }
}
