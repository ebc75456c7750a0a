import fs from 'node:fs/promises';

/** Pids of live QEMU processes whose command line passes `match`, in ascending order. */
export async function qemuPidsWhere(match: (cmdline: string) => boolean): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmd = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (!cmd.includes('qemu-system')) continue;
    const stat = await fs.readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (/\) Z /.test(stat)) continue; // a zombie is gone, only not yet reaped
    if (match(cmd)) pids.push(Number(entry));
  }
  return pids.sort((a, b) => a - b);
}

/** Pids of live QEMU processes started for any of `vmIds` (found by their `-name forky-<id>`). */
export function qemuPidsOf(vmIds: readonly string[]): Promise<number[]> {
  return qemuPidsWhere((cmd) => vmIds.some((id) => cmd.includes(`forky-${id},`)));
}

/** True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone. */
export async function isRunning(pid: number): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && !/\) Z /.test(stat);
}
