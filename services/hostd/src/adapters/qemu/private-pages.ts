import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { ForkyError, isNoSpace } from '@forky/base';
import { ramDirFull } from '../ram-space.js';
import { softDirtyTracked } from './soft-dirty.js';

const PAGE = 4096;
/** Pages copied per read: big enough to amortise the syscall, small enough to stay in cache. */
const MAX_RUN_PAGES = 256;
/** High word of a pagemap entry: bit 63 present, 62 swapped, 61 file-backed, 55 soft-dirty. */
const PRESENT_OR_SWAPPED = 0xc0000000;
const FILE_BACKED = 0x20000000;
const SOFT_DIRTY = 0x00800000;

interface Mapping {
  start: number;
  end: number;
  offset: number;
}

interface Fds {
  pagemap: number;
  mem: number;
  out: number;
  ram: number;
}

/** What a copy made while the VM ran leaves for the pause: the pages of the RAM file it wrote. */
interface PreCopy {
  pid: number;
  ramFile: string;
  copied: Uint8Array;
}

/** Where the process files are read (a test points this at a directory of its own). */
export interface ProcFiles {
  root: string;
  /** Whether the kernel tracks soft-dirty pages; asked only for a pre-copy. */
  softDirty?: () => boolean;
}
const PROC: ProcFiles = { root: '/proc' };

/**
 * Pre-copies by destination, until the pause's copy takes them. Never evicted: a pause copy over a
 * pre-copied file without its record would leave pages the process gave back stale. A new
 * pre-copy of a process drops that process's older ones (one snapshot of a VM at a time: its lock).
 */
const precopies = new Map<string, PreCopy>();
/** Destinations pre-copied whose record is still owed to the pause's copy. */
const pending = new Map<string, number>();

/**
 * Copies the pages of process `pid`'s private mapping of `ramFile` that it has made its own
 * (copy-on-write faults) into `dest`, at the same offsets. Untouched pages still read through to
 * `ramFile`, which `dest` already copies, so only what changed is written.
 * `precopy`, while the VM runs and where the kernel tracks soft-dirty pages: clears the bits,
 * then copies; the next call for `dest` (in the pause) copies only the private pages written
 * since (soft-dirty) or made private since, and gives a pre-copied page the process has let go
 * of (it reads the file again) the file's page back. Without soft-dirty tracking a pre-copy does
 * nothing and the pause copies everything: nothing else can tell what the guest wrote since.
 * /proc/<pid>/pagemap: bit 63 present, 62 swapped, 61 file-backed (clear for a private copy), 55 soft-dirty.
 * Synchronous on purpose: it runs while the VM is stopped, and thousands of small reads through
 * the thread pool cost more than the copy itself.
 */
export function copyPrivatePages(
  pid: number,
  ramFile: string,
  dest: string,
  opts: { precopy?: boolean } = {},
  proc = PROC,
): { bytes: number } {
  if (opts.precopy) return precopy(pid, ramFile, dest, proc);
  const pre = precopies.get(dest);
  precopies.delete(dest);
  const owed = pending.delete(dest);
  if (owed && (!pre || pre.pid !== pid || pre.ramFile !== ramFile))
    throw new ForkyError('INTERNAL', `the pre-copy record of ${dest} is gone or not this process's: the snapshot is not taken`);
  return withFds(pid, ramFile, dest, proc, (maps, fds) => {
    if (!pre) return sum(maps, (map) => copyPages(pid, map, fds, dest, isPrivate));
    const stale = pre.copied;
    const bytes = sum(maps, (map) =>
      copyPages(pid, map, fds, dest, (hi, page) => {
        if (!isPrivate(hi)) return false;
        const was = stale[page] === 1;
        stale[page] = 0;
        return !was || (hi & SOFT_DIRTY) !== 0;
      }),
    );
    return bytes + restoreFromFile(stale, fds, dest);
  });
}

function precopy(pid: number, ramFile: string, dest: string, proc: ProcFiles): { bytes: number } {
  for (const [d, owner] of pending)
    if (d === dest || owner === pid) {
      precopies.delete(d);
      pending.delete(d);
    }
  if (!(proc.softDirty ?? softDirtyTracked)()) return { bytes: 0 };
  // Owed from here: a pause copy that then finds no record refuses, rather than copy over it blindly.
  pending.set(dest, pid);
  const fd = openSync(`${proc.root}/${pid}/clear_refs`, 'w');
  try {
    // 4: clear the soft-dirty bits. Before the copy: a page written during it is copied again.
    writeSync(fd, '4');
  } finally {
    closeSync(fd);
  }
  return withFds(pid, ramFile, dest, proc, (maps, fds) => {
    const copied = new Uint8Array(Math.max(...maps.map((m) => (m.offset + m.end - m.start) / PAGE)));
    const n = sum(maps, (map) =>
      copyPages(pid, map, fds, dest, (hi, page) => {
        if (!isPrivate(hi)) return false;
        copied[page] = 1;
        return true;
      }),
    );
    precopies.set(dest, { pid, ramFile, copied });
    return n;
  });
}

function withFds(
  pid: number,
  ramFile: string,
  dest: string,
  proc: ProcFiles,
  fn: (maps: Mapping[], fds: Fds) => number,
): { bytes: number } {
  const maps = findMappings(pid, ramFile, proc.root);
  const fds: Fds = { pagemap: openSync(`${proc.root}/${pid}/pagemap`, 'r'), mem: -1, out: -1, ram: -1 };
  try {
    fds.mem = openSync(`${proc.root}/${pid}/mem`, 'r');
    fds.out = openSync(dest, 'r+');
    fds.ram = openSync(ramFile, 'r');
    return { bytes: fn(maps, fds) };
  } finally {
    for (const fd of Object.values(fds)) if (fd >= 0) closeSync(fd);
  }
}

/** Copies the runs of pages `want` picks (by pagemap high word and page of the file; asked once a page) from the process. */
function copyPages(pid: number, map: Mapping, fds: Fds, dest: string, want: (hi: number, page: number) => boolean): number {
  const pages = (map.end - map.start) / PAGE;
  const first = map.offset / PAGE;
  const entries = Buffer.alloc(pages * 8);
  const got = readSync(fds.pagemap, entries, 0, entries.length, (map.start / PAGE) * 8);
  if (got !== entries.length) throw new ForkyError('INTERNAL', `short pagemap read for pid ${pid}: ${got} of ${entries.length}`);
  const picked = new Uint8Array(pages);
  for (let i = 0; i < pages; i++) picked[i] = want(entries.readUInt32LE(i * 8 + 4), first + i) ? 1 : 0;
  const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE);
  let bytes = 0;
  for (let i = picked.indexOf(1); i >= 0;) {
    let n = 1;
    while (n < MAX_RUN_PAGES && i + n < pages && picked[i + n] === 1) n++;
    const len = n * PAGE;
    if (readSync(fds.mem, buf, 0, len, map.start + i * PAGE) !== len)
      throw new ForkyError('INTERNAL', `short read of guest RAM of pid ${pid} at page ${i}`);
    write(fds.out, buf, len, map.offset + i * PAGE, `the pages process ${pid} made its own`, dest);
    bytes += len;
    i = picked.indexOf(1, i + n);
  }
  return bytes;
}

/** Puts the file's own pages back where a pre-copy wrote pages the process no longer holds. */
function restoreFromFile(stale: Uint8Array, fds: Fds, dest: string): number {
  const buf = Buffer.alloc(PAGE);
  let bytes = 0;
  for (let page = stale.indexOf(1); page >= 0; page = stale.indexOf(1, page + 1)) {
    const got = readSync(fds.ram, buf, 0, PAGE, page * PAGE);
    buf.fill(0, got);
    write(fds.out, buf, PAGE, page * PAGE, 'a page given back to its RAM file', dest);
    bytes += PAGE;
  }
  return bytes;
}

function write(fd: number, buf: Buffer, len: number, at: number, what: string, dest: string): void {
  try {
    writeSync(fd, buf, 0, len, at);
  } catch (e) {
    if (isNoSpace(e)) throw ramDirFull(what, dest, e);
    throw e;
  }
}

/** Present or swapped, and not a page of the file. */
function isPrivate(hi: number): boolean {
  return (hi & PRESENT_OR_SWAPPED) !== 0 && (hi & FILE_BACKED) === 0;
}

const sum = (maps: Mapping[], fn: (m: Mapping) => number): number => maps.reduce((n, m) => n + fn(m), 0);

/** The process's mappings of `file` (the kernel may split one mmap into several). */
function findMappings(pid: number, file: string, root: string): Mapping[] {
  const found: Mapping[] = [];
  for (const line of readFileSync(`${root}/${pid}/maps`, 'utf8').split('\n')) {
    // start-end perms offset dev inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (m && m[4] === file)
      found.push({ start: parseInt(m[1] as string, 16), end: parseInt(m[2] as string, 16), offset: parseInt(m[3] as string, 16) });
  }
  if (found.length === 0) throw new ForkyError('INTERNAL', `process ${pid} has no mapping of ${file}`);
  return found;
}
