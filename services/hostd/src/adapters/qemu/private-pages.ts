import fs from 'node:fs/promises';
import { ForkyError } from '@forky/base';

const PAGE = 4096;
/** Pages copied per read: big enough to amortise the syscall, small enough to stay in cache. */
const MAX_RUN_PAGES = 256;

/**
 * Copies the pages of process `pid`'s private mapping of `ramFile` that it has made its own
 * (copy-on-write faults) into `dest`, at the same offsets. Untouched pages still read through to
 * `ramFile`, which `dest` already copies, so only what changed is written.
 * /proc/<pid>/pagemap: bit 63 present, bit 62 swapped, bit 61 file-backed (clear for a private copy).
 */
export async function copyPrivatePages(pid: number, ramFile: string, dest: string): Promise<{ bytes: number }> {
  const maps = await findMappings(pid, ramFile);
  const pagemap = await fs.open(`/proc/${pid}/pagemap`, 'r');
  const mem = await fs.open(`/proc/${pid}/mem`, 'r');
  const out = await fs.open(dest, 'r+');
  try {
    let bytes = 0;
    for (const map of maps) bytes += await copyMapping(pid, map, pagemap, mem, out);
    return { bytes };
  } finally {
    await Promise.all([pagemap.close(), mem.close(), out.close()]);
  }
}

interface Mapping {
  start: number;
  end: number;
  offset: number;
}

async function copyMapping(pid: number, map: Mapping, pagemap: fs.FileHandle, mem: fs.FileHandle, out: fs.FileHandle): Promise<number> {
  const pages = (map.end - map.start) / PAGE;
  const entries = Buffer.alloc(pages * 8);
  const { bytesRead } = await pagemap.read(entries, 0, entries.length, (map.start / PAGE) * 8);
  if (bytesRead !== entries.length) throw new ForkyError('INTERNAL', `short pagemap read for pid ${pid}: ${bytesRead} of ${entries.length}`);
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
    const got = await mem.read(buf, 0, len, map.start + i * PAGE);
    if (got.bytesRead !== len) throw new ForkyError('INTERNAL', `short read of guest RAM of pid ${pid} at page ${i}`);
    await out.write(buf, 0, len, map.offset + i * PAGE);
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
async function findMappings(pid: number, file: string): Promise<Mapping[]> {
  const found: Mapping[] = [];
  for (const line of (await fs.readFile(`/proc/${pid}/maps`, 'utf8')).split('\n')) {
    // start-end perms offset dev inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (m && m[4] === file) found.push({ start: parseInt(m[1] as string, 16), end: parseInt(m[2] as string, 16), offset: parseInt(m[3] as string, 16) });
  }
  if (found.length === 0) throw new ForkyError('INTERNAL', `process ${pid} has no mapping of ${file}`);
  return found;
}
