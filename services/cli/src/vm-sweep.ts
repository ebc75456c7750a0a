import fs from 'node:fs/promises';
import path from 'node:path';
import { delay } from '@forky/base';
import { isAlive } from './pids.js';

/** A QEMU process of this cluster, found in /proc. */
export interface ClusterQemu {
  pid: number;
  /** From `-name forky-<vm>,…`; a warm-pool process has one too. */
  vm?: string;
}

/**
 * QEMU processes whose command line names a path under one of `dirs` (its sockets under the
 * host's data dir, its RAM file under the RAM dir): the VMs of a cluster, found the way hostd's
 * recovery finds its own (adapters/qemu/process.ts), without depending on hostd. Only processes
 * whose program is qemu-system-*: anything else that mentions the directory is left alone.
 */
export async function findClusterQemu(dirs: readonly string[]): Promise<ClusterQemu[]> {
  // QEMU's option syntax doubles commas in a path, so look for both spellings.
  const needles = dirs.flatMap((d) => [`${d}/`, `${d.replaceAll(',', ',,')}/`]);
  const out: ClusterQemu[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const args = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (t) => t.split('\0'),
      () => [] as string[],
    );
    if (!/^qemu-system-/.test(path.basename(args[0] ?? ''))) continue;
    if (!args.some((a) => needles.some((n) => a.includes(n)))) continue;
    const pid = Number(entry);
    if (!isAlive(pid)) continue;
    const name = args.indexOf('-name') >= 0 ? args[args.indexOf('-name') + 1] : undefined;
    const vm = /^forky-(vm-[a-z0-9]+),/.exec(name ?? '')?.[1];
    out.push({ pid, ...(vm ? { vm } : {}) });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** SIGKILL (a VM nobody manages has nothing to save) and wait, 5 s at most; returns what is still alive, and why. */
export async function killQemu(procs: readonly ClusterQemu[]): Promise<Array<ClusterQemu & { why: string }>> {
  const failed: Array<ClusterQemu & { why: string }> = [];
  for (const p of procs) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') failed.push({ ...p, why: (e as Error).message });
    }
  }
  const deadline = Date.now() + 5000;
  while (procs.some((p) => isAlive(p.pid)) && Date.now() < deadline) await delay(25);
  for (const p of procs)
    if (isAlive(p.pid) && !failed.some((f) => f.pid === p.pid)) failed.push({ ...p, why: 'still running 5 s after SIGKILL' });
  return failed;
}

/** Removes `dir` (the cluster's RAM directory on tmpfs); returns how many files were in it. */
export async function removeRamDir(dir: string): Promise<number> {
  let n = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(path.join(d, e.name));
      else n++;
    }
  };
  await walk(dir);
  await fs.rm(dir, { recursive: true, force: true });
  return n;
}
