import fs from 'node:fs/promises';
import { execa } from 'execa';
import { CapacityError, ForkyError } from '@forky/base';
import type { RamSpace } from '../domain/ports.js';

/** The RAM directory's tmpfs as statfs(2) and stat(2) see it. */
export class StatfsRamSpace implements RamSpace {
  constructor(readonly dir: string) {}

  async freeBytes(): Promise<number> {
    const s = await fs.statfs(this.dir);
    return s.bavail * s.bsize;
  }

  async allocatedBytes(file: string): Promise<number> {
    const st = await fs.stat(file).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    return st ? st.blocks * 512 : 0;
  }

  /**
   * `fallocate --dig-holes` punches every all-zero block. Safe on a frozen file only: nothing
   * writes it (children map it MAP_PRIVATE), so a zero block stays zero, and a punched page reads
   * as zero again. Measured: safe for running children, whose own copies survive (README, hostd).
   */
  async reclaim(file: string): Promise<number> {
    const before = await this.allocatedBytes(file);
    if (before === 0) return 0;
    const st = await fs.stat(file);
    // A frozen file is 0400; punching needs a writable descriptor, which root gets anyway.
    const unlock = process.getuid?.() !== 0 && (st.mode & 0o200) === 0;
    if (unlock) await fs.chmod(file, (st.mode & 0o7777) | 0o200);
    try {
      await execa('fallocate', ['--dig-holes', file]);
    } catch (e) {
      throw new ForkyError(
        'INTERNAL',
        `cannot give back the zero pages of ${file}: ${(e as { shortMessage?: string }).shortMessage ?? String(e)}`,
        { cause: e },
      );
    } finally {
      if (unlock) await fs.chmod(file, st.mode & 0o7777).catch(() => undefined);
    }
    return Math.max(0, before - (await this.allocatedBytes(file)));
  }
}

/** The typed error for a write the RAM directory had no room for (ENOSPC), naming what it was. */
export function ramDirFull(what: string, file: string, cause: unknown): CapacityError {
  return new CapacityError(`no room left in the RAM directory for ${what} (${file})`, { file }, cause);
}
