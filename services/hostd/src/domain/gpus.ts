import { CapacityError } from '@forky/base';

/** A GPU for passthrough: one IOMMU group, every function of which goes to the VM. */
export interface Gpu {
  /** The IOMMU group number (/dev/vfio/<group>). */
  group: string;
  /** PCI addresses of the group's functions (the GPU, its audio device, …), bridges excepted. */
  functions: string[];
  vendor: string;
  device: string;
}

/**
 * Which VM holds which GPU. hostd is the authority: the scheduler places on heartbeats, which lag,
 * so two boots placed between beats are settled here and the one too many is refused. The
 * holdings are rebuilt from the VM records after a restart (`adopt`).
 */
export class GpuAllocator {
  readonly #holder = new Map<string, string>();

  constructor(
    private readonly gpus: readonly Gpu[],
    private readonly hostId: string,
  ) {}

  get total(): number {
    return this.gpus.length;
  }

  get free(): number {
    return this.gpus.length - this.#holder.size;
  }

  /** Gives `vm` `count` free GPUs, or refuses (CAPACITY, field `gpus`) and gives none. */
  take(vm: string, count: number): Gpu[] {
    if (count === 0) return [];
    const free = this.gpus.filter((g) => !this.#holder.has(g.group));
    if (free.length < count) {
      const held = [...new Set(this.#holder.values())];
      throw new CapacityError(
        this.gpus.length === 0
          ? `host ${this.hostId} has no GPU bound to vfio-pci; ${count} asked`
          : `host ${this.hostId} has ${free.length} free GPU(s) of ${this.gpus.length} (held by ${held.join(', ')}); ${count} asked`,
        { field: 'gpus' },
      );
    }
    const mine = free.slice(0, count);
    for (const g of mine) this.#holder.set(g.group, vm);
    return mine;
  }

  /** Marks GPUs a VM already holds (found on disk after a restart). Unknown groups are ignored. */
  adopt(vm: string, groups: readonly string[]): void {
    for (const g of groups) if (this.gpus.some((x) => x.group === g)) this.#holder.set(g, vm);
  }

  release(vm: string): void {
    for (const [g, holder] of this.#holder) if (holder === vm) this.#holder.delete(g);
  }
}
