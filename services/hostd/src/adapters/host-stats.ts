import fs from 'node:fs/promises';
import os from 'node:os';
import type { HostStats } from '../domain/ports.js';

/** HostStats from /proc and /sys. */
export class ProcHostStats implements HostStats {
  cpus(): number {
    return os.cpus().length;
  }

  async meminfo(): Promise<{ totalMiB: number; availableMiB: number }> {
    const text = await fs.readFile('/proc/meminfo', 'utf8');
    const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
    return { totalMiB: Math.floor(kib('MemTotal') / 1024), availableMiB: Math.floor(kib('MemAvailable') / 1024) };
  }

  async pssMiB(pid: number): Promise<number> {
    const text = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? 0) / 1024;
  }

  async ksmSavedMiB(): Promise<number> {
    const sharing = Number((await fs.readFile('/sys/kernel/mm/ksm/pages_sharing', 'utf8').catch(() => '0')).trim()) || 0;
    return Math.round((sharing * 4096) / 2 ** 20);
  }
}
