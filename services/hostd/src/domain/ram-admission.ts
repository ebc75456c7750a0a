import { CapacityError, type Logger } from '@forky/base';
import type { RamSpace } from './ports.js';

const MiB = 2 ** 20;

/**
 * A RAM file as admission weighs it: `nominalBytes` is what it may grow to (its guest's size).
 * No `file`: a file not named yet (a fork's snapshot copy before the snapshot has an id).
 */
export interface RamFile {
  file?: string;
  nominalBytes: number;
}

/** What a request will put in the RAM directory, and how to say it. */
export interface RamNeed {
  what: string;
  files: RamFile[];
}

/** What one request holds while it runs, so that requests running at once see each other's needs. */
export interface RamHold {
  /** Admits `need` (in place of what this hold held before) or refuses with CAPACITY, changing nothing. */
  admit(need: RamNeed, field: string): Promise<void>;
}

interface VmRam {
  id: string;
  memMiB: number;
  ram: { file: string; shared: boolean };
}

interface SnapRam {
  id: string;
  profile: { memMiB: number };
}

/**
 * What each request may take from the RAM directory (a tmpfs). The choice (README, hostd): a
 * RAM file is counted at its guest's size. A booted VM's own file fills as its guest touches
 * memory; a frozen snapshot file fills too, because tmpfs allocates a page in the file when a
 * copy-on-write child first touches a hole (read or write). Either way a file never outgrows
 * its guest's size, however many children map it, so that size is the bound.
 */
export const ramNeed = {
  boot(file: string, memMiB: number): RamNeed {
    return {
      what: `a ${memMiB} MiB VM (its RAM file fills to that as the guest touches memory)`,
      files: [{ file, nominalBytes: memMiB * MiB }],
    };
  },
  /** A VM that owns its RAM gives the file to the snapshot by rename: nothing new. Otherwise a copy. */
  snapshot(vm: VmRam, file: string): RamNeed {
    if (vm.ram.shared) return { what: `a snapshot of ${vm.id} (its RAM file is renamed)`, files: [] };
    return {
      what: `a snapshot of ${vm.id}: a copy of the RAM file it maps, which its children may fill to ${vm.memMiB} MiB`,
      files: [{ file, nominalBytes: vm.memMiB * MiB }],
    };
  },
  forkVm(vm: VmRam): RamNeed {
    if (vm.ram.shared)
      return {
        what: `a fork of ${vm.id}: the children may fill its RAM file to ${vm.memMiB} MiB`,
        files: [{ file: vm.ram.file, nominalBytes: vm.memMiB * MiB }],
      };
    return {
      what: `a fork of ${vm.id}: a copy of the RAM file it maps, which the children may fill to ${vm.memMiB} MiB`,
      files: [{ nominalBytes: vm.memMiB * MiB }],
    };
  },
  forkSnapshot(snap: SnapRam, file: string): RamNeed {
    const { memMiB } = snap.profile;
    return {
      what: `a fork of ${snap.id}: the children may fill its RAM file to ${memMiB} MiB`,
      files: [{ file, nominalBytes: memMiB * MiB }],
    };
  },
};

/** Every RAM file a host's VMs and snapshots point at, each at the guest size it may grow to. */
export function knownRamFiles(vms: Iterable<VmRam>, snaps: Iterable<{ info: SnapRam }>, ramOf: (snapshotId: string) => string): RamFile[] {
  const out: RamFile[] = [];
  for (const v of vms) out.push({ file: v.ram.file, nominalBytes: v.memMiB * MiB });
  for (const { info } of snaps) out.push({ file: ramOf(info.id), nominalBytes: info.profile.memMiB * MiB });
  return out;
}

/** Where nothing is checked: a dry run, whose RAM files stay empty, or an engine under test without a RAM directory. */
export const UNLIMITED_RAM: RamSpace = {
  dir: '(none)',
  freeBytes: async () => Number.MAX_SAFE_INTEGER,
  allocatedBytes: async () => 0,
  reclaim: async () => 0,
};

class Hold implements RamHold {
  files: RamFile[] = [];
  constructor(private readonly owner: RamAdmission) {}
  admit(need: RamNeed, field: string): Promise<void> {
    return this.owner.admitFor(this, need, field);
  }
}

/**
 * Admission to the RAM directory: a request is let in only if what it may take fits in what the
 * filesystem has free, less what the files already there may still grow by (each file's nominal
 * size less what it takes now). Checks run one at a time and their holds stay until the request
 * ends, so two requests never both count the same free space.
 */
export class RamAdmission {
  readonly #holds = new Set<Hold>();
  #queue: Promise<unknown> = Promise.resolve();
  readonly #reclaims = new Map<string, { again: boolean; done: Promise<void> }>();

  constructor(
    private readonly space: RamSpace,
    private readonly hostId: string,
    private readonly known: () => RamFile[],
    private readonly log: Logger,
  ) {}

  /** Runs one request with a hold of its own, given back when it ends (its files are the records' by then, or gone). */
  async during<T>(fn: (hold: RamHold) => Promise<T>): Promise<T> {
    const hold = new Hold(this);
    this.#holds.add(hold);
    try {
      return await fn(hold);
    } finally {
      this.#holds.delete(hold);
    }
  }

  /** @internal Through a hold. */
  admitFor(hold: Hold, need: RamNeed, field: string): Promise<void> {
    const run = this.#queue.then(() => this.#admit(hold, need, field));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #admit(hold: Hold, need: RamNeed, field: string): Promise<void> {
    if (need.files.length > 0) {
      const w = await this.#weigh(hold, need.files);
      const available = w.freeBytes - w.heldBytes;
      if (w.needBytes > available) {
        const needMiB = Math.ceil(w.needBytes / MiB);
        const freeMiB = Math.max(0, Math.floor(available / MiB));
        // Whole MiB that add up: free on the filesystem = held + free for new RAM.
        const fsFreeMiB = Math.floor(w.freeBytes / MiB);
        const heldMiB = fsFreeMiB - Math.floor(available / MiB);
        throw new CapacityError(
          `host ${this.hostId} has no room in its RAM directory ${this.space.dir} for ${need.what}: it needs ${needMiB} MiB, ${freeMiB} MiB are free ` +
            `(${fsFreeMiB} MiB on the filesystem, less ${heldMiB} MiB that ${w.heldFiles} RAM file(s) here may still grow by)`,
          { field, needMiB, freeMiB, dir: this.space.dir, fsFreeMiB, heldMiB },
        );
      }
    }
    hold.files = need.files;
  }

  /** What `files` may still take, and what every other file (records and other holds) may. */
  async #weigh(hold: Hold, files: RamFile[]): Promise<{ needBytes: number; heldBytes: number; freeBytes: number; heldFiles: number }> {
    const mine = new Map<string, number>();
    let unnamedMine = 0;
    for (const f of files) {
      if (f.file) mine.set(f.file, Math.max(mine.get(f.file) ?? 0, f.nominalBytes));
      else unnamedMine += f.nominalBytes;
    }
    // By path: a file both held and already in the records (a boot's VM, once made) counts once.
    const others = new Map<string, number>();
    let unnamedOthers = 0;
    let unnamedCount = 0;
    const add = (f: RamFile): void => {
      if (!f.file) {
        unnamedOthers += f.nominalBytes;
        unnamedCount++;
      } else if (!mine.has(f.file)) others.set(f.file, Math.max(others.get(f.file) ?? 0, f.nominalBytes));
    };
    for (const f of this.known()) add(f);
    for (const h of this.#holds) if (h !== hold) for (const f of h.files) add(f);
    const room = async ([file, nominal]: [string, number]): Promise<number> =>
      Math.max(0, nominal - (await this.space.allocatedBytes(file)));
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
    // Allocation first, free space after: a page a child fills in between is counted twice, never missed.
    const [mineRoom, othersRoom] = await Promise.all([Promise.all([...mine].map(room)), Promise.all([...others].map(room))]);
    const freeBytes = await this.space.freeBytes();
    return {
      needBytes: sum(mineRoom) + unnamedMine,
      heldBytes: sum(othersRoom) + unnamedOthers,
      freeBytes,
      heldFiles: othersRoom.filter((b) => b > 0).length + unnamedCount,
    };
  }

  /**
   * Gives back the zero pages children filled in a frozen RAM file (best effort: a failure is
   * logged). Calls for a file already being reclaimed join it, with one more pass after it.
   */
  reclaim(file: string): Promise<void> {
    const running = this.#reclaims.get(file);
    if (running) {
      running.again = true;
      return running.done;
    }
    const entry = { again: false, done: Promise.resolve() };
    entry.done = (async () => {
      do {
        entry.again = false;
        const t0 = performance.now();
        try {
          const freed = await this.space.reclaim(file);
          if (freed > 0)
            this.log.info(
              { file, freedMiB: Math.round(freed / MiB), ms: Math.round(performance.now() - t0) },
              'zero pages of a frozen RAM file given back',
            );
        } catch (err) {
          this.log.warn({ err, file }, 'could not give back the zero pages of a RAM file');
        }
      } while (entry.again);
      this.#reclaims.delete(file);
    })();
    this.#reclaims.set(file, entry);
    return entry.done;
  }
}
