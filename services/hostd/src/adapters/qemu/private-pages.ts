import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { ForkyError, isNoSpace } from '@forky/base';
import { ramDirFull } from '../ram-space.js';

const PAGE = 4096;
/** Pages copied per read: big enough to amortise the syscall, small enough to stay in cache. */
const MAX_RUN_PAGES = 256;

interface Mapping {
  start: number;
  end: number;
  offset: number;
}

/**
 * Copies the pages of process `pid`'s private mapping of `ramFile` that it has made its own
 * (copy-on-write faults) into `dest`, at the same offsets. Untouched pages still read through to
 * `ramFile`, which `dest` already copies, so only what changed is written.
 * /proc/<pid>/pagemap: bit 63 present, bit 62 swapped, bit 61 file-backed (clear for a private copy).
 * Synchronous on purpose: it runs while the VM is stopped, and thousands of small reads through
 * the thread pool cost more than the copy itself.
 */
export function copyPrivatePages(pid: number, ramFile: string, dest: string): { bytes: number } {
  const maps = findMappings(pid, ramFile);
  const fds = { pagemap: openSync(`/proc/${pid}/pagemap`, 'r'), mem: -1, out: -1 };
  try {
    fds.mem = openSync(`/proc/${pid}/mem`, 'r');
    fds.out = openSync(dest, 'r+');
    let bytes = 0;
    for (const map of maps) bytes += copyMapping(pid, map, fds, dest);
    return { bytes };
  } finally {
    for (const fd of Object.values(fds)) if (fd >= 0) closeSync(fd);
  }
}

function copyMapping(pid: number, map: Mapping, fds: { pagemap: number; mem: number; out: number }, dest: string): number {
  const pages = (map.end - map.start) / PAGE;
  const entries = Buffer.alloc(pages * 8);
  const got = readSync(fds.pagemap, entries, 0, entries.length, (map.start / PAGE) * 8);
  if (got !== entries.length) throw new ForkyError('INTERNAL', `short pagemap read for pid ${pid}: ${got} of ${entries.length}`);
  const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE);
  let bytes = 0;
  let i = 0;
  while (i < pages) {
    if (!isPrivate(entries.readUInt32LE(i * 8 + 4))) {
      i++;
      continue;
    }
    let n = 1;
    while (n < MAX_RUN_PAGES && i + n < pages && isPrivate(entries.readUInt32LE((i + n) * 8 + 4))) n++;
    const len = n * PAGE;
    if (readSync(fds.mem, buf, 0, len, map.start + i * PAGE) !== len)
      throw new ForkyError('INTERNAL', `short read of guest RAM of pid ${pid} at page ${i}`);
    try {
      writeSync(fds.out, buf, 0, len, map.offset + i * PAGE);
    } catch (e) {
      if (isNoSpace(e)) throw ramDirFull(`the pages process ${pid} made its own`, dest, e);
      throw e;
    }
    bytes += len;
    i += n;
  }
  return bytes;
}

/** High word of a pagemap entry: present or swapped, and not a page of the file. */
function isPrivate(hi: number): boolean {
  return (hi & 0xc0000000) !== 0 && (hi & 0x20000000) === 0;
}

/** The process's mappings of `file` (the kernel may split one mmap into several). */
function findMappings(pid: number, file: string): Mapping[] {
  const found: Mapping[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    // start-end perms offset dev inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (m && m[4] === file)
      found.push({ start: parseInt(m[1] as string, 16), end: parseInt(m[2] as string, 16), offset: parseInt(m[3] as string, 16) });
  }
  if (found.length === 0) throw new ForkyError('INTERNAL', `process ${pid} has no mapping of ${file}`);
  return found;
}
