import fs from 'node:fs';

/** Whether `pid` runs (a zombie does not). Apart from procs.ts, which needs @forky/base: `forky status` loads only this. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}
