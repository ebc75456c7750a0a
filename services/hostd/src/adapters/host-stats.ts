import fs from 'node:fs/promises';

export async function meminfo(): Promise<{ totalMiB: number; availableMiB: number }> {
  const text = await fs.readFile('/proc/meminfo', 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { totalMiB: Math.floor(kib('MemTotal') / 1024), availableMiB: Math.floor(kib('MemAvailable') / 1024) };
}

export async function pssMiB(pid: number): Promise<number> {
  const text = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
  return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? 0) / 1024;
}

/** Pages KSM shares beyond the first copy, as MiB; 0 where KSM is absent or off. */
export async function ksmSavedMiB(): Promise<number> {
  const sharing = Number((await fs.readFile('/sys/kernel/mm/ksm/pages_sharing', 'utf8').catch(() => '0')).trim()) || 0;
  return Math.round((sharing * 4096) / 2 ** 20);
}
