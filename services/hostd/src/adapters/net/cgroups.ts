import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { delay, ForkyError } from '@forky/base';

/** nft names cgroups relative to this directory. */
export const CGROUP_BASE = '/sys/fs/cgroup';

/** The cgroup2 tree as this process sees it. */
export interface Cgroup2 {
  /** Where it is mounted (`/sys/fs/cgroup/unified` on a hybrid host, `/sys/fs/cgroup` on a v2 one). */
  mount: string;
  /** Whether we mounted it (in a private mount namespace: `ip netns exec` remounts /sys). */
  mountedByUs: boolean;
}

/** cgroup2 mount points from /proc/self/mountinfo (fields: … mount-point … - fstype …). */
async function cgroup2Mounts(): Promise<string[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right || right.split(' ')[0] !== 'cgroup2') continue;
    const mountPoint = left.split(' ')[4];
    if (mountPoint) out.push(mountPoint.replace(/\\040/g, ' '));
  }
  return out;
}

/**
 * Finds the cgroup2 tree nft can name (under /sys/fs/cgroup). Inside `ip netns exec`, /sys is a
 * fresh sysfs with an empty /sys/fs/cgroup: as root we mount cgroup2 there (only that private
 * mount namespace sees it). Throws with the reason when there is none to use.
 */
export async function findCgroup2(): Promise<Cgroup2> {
  const mounts = await cgroup2Mounts();
  const usable = mounts.find((m) => m === CGROUP_BASE || m.startsWith(CGROUP_BASE + '/'));
  if (usable) return { mount: usable, mountedByUs: false };
  if (mounts.length > 0)
    throw new Error(`cgroup2 is mounted at ${mounts.join(', ')}, not under ${CGROUP_BASE}, where nft looks for cgroups`);
  const entries = await fs.readdir(CGROUP_BASE).catch(() => undefined);
  if (entries === undefined) throw new Error(`no cgroup2 mounted and no ${CGROUP_BASE}`);
  if (entries.length > 0) throw new Error(`no cgroup2 mounted, and ${CGROUP_BASE} is not empty (cgroup v1 only)`);
  if (process.getuid?.() !== 0) throw new Error(`no cgroup2 mounted, and mounting one at ${CGROUP_BASE} needs root`);
  try {
    await execa('mount', ['-t', 'cgroup2', 'none', CGROUP_BASE], { timeout: 10_000 });
  } catch (e) {
    throw new Error(`cannot mount cgroup2 at ${CGROUP_BASE}: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
  }
  return { mount: CGROUP_BASE, mountedByUs: true };
}

/** The cgroup's path as nft writes it (relative to /sys/fs/cgroup), and its depth in the tree. */
export function nftName(cg: Cgroup2, dir: string): { name: string; level: number } {
  const name = path.relative(CGROUP_BASE, dir);
  return { name, level: path.relative(cg.mount, dir).split('/').filter(Boolean).length };
}

/**
 * Makes a cgroup directory; says whether it was made now. `recursive: false` (a VM's): its parent,
 * the host's cgroup, must be there, or the filter's rule (which names the parent by its id) would
 * not see the VM.
 */
export async function makeDir(dir: string, recursive = true): Promise<boolean> {
  try {
    if (recursive) return (await fs.mkdir(dir, { recursive: true })) !== undefined;
    await fs.mkdir(dir);
    return true;
  } catch (e) {
    if (!recursive && (e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new ForkyError('INTERNAL', `cannot make cgroup ${dir}: ${(e as Error).message}`, { cause: e });
  }
}

/** Processes in a cgroup and every cgroup under it; 0 when it is gone. */
export async function processesUnder(dir: string): Promise<number> {
  let n = await procsIn(dir);
  for (const c of await childDirs(dir)) n += await processesUnder(path.join(dir, c));
  return n;
}

/** Processes still in a cgroup (its cgroup.procs); 0 when it is gone. */
export async function procsIn(dir: string): Promise<number> {
  const text = await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).length;
}

/**
 * Removes a cgroup directory (and its child cgroups). While processes remain (a QEMU still exiting)
 * it retries for `waitMs`, then throws: it never kills them.
 */
export async function removeDir(dir: string, waitMs = 2_000): Promise<void> {
  const children = await fs.readdir(dir, { withFileTypes: true }).catch(() => undefined);
  if (children === undefined) return; // gone already
  for (const c of children) if (c.isDirectory()) await removeDir(path.join(dir, c.name), waitMs);
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      await fs.rmdir(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || Date.now() > until) {
        const left = await procsIn(dir);
        throw new ForkyError('INTERNAL', `cannot remove cgroup ${dir}: ${left > 0 ? `${left} processes remain` : (e as Error).message}`, {
          cause: e,
        });
      }
      await delay(50);
    }
  }
}

/** Names of the child cgroups of `dir` (empty when it does not exist). */
export async function childDirs(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}
