import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

/** Bit 55 of a pagemap entry (bit 23 of its high word). */
const SOFT_DIRTY = 0x00800000;
const PRESENT = 0x80000000;
let tracked: boolean | undefined;

/**
 * Whether the kernel tracks soft-dirty pages (CONFIG_MEM_SOFT_DIRTY), asked once. Where it does,
 * every page of a mapping never cleared reads soft-dirty (new mappings start so, and a write marks
 * its page): this process's stack, which nothing clears, then shows bit 55; where it does not,
 * bit 55 is always clear and a pre-copy could not tell what the guest wrote since.
 */
export function softDirtyTracked(): boolean {
  // A /proc that cannot be read is no tracking: the pause then copies everything, as before.
  tracked ??= (() => {
    try {
      return probe();
    } catch {
      return false;
    }
  })();
  return tracked;
}

function probe(): boolean {
  const m = /^([0-9a-f]+)-([0-9a-f]+) .*\[stack\]$/m.exec(readFileSync('/proc/self/maps', 'utf8'));
  if (!m) return false;
  const start = parseInt(m[1] as string, 16) / 4096;
  const pages = parseInt(m[2] as string, 16) / 4096 - start;
  const entries = Buffer.alloc(pages * 8);
  const fd = openSync('/proc/self/pagemap', 'r');
  try {
    const got = readSync(fd, entries, 0, entries.length, start * 8);
    for (let i = 0; i + 8 <= got; i += 8) {
      const hi = entries.readUInt32LE(i + 4);
      if ((hi & PRESENT) !== 0 && (hi & SOFT_DIRTY) !== 0) return true;
    }
    return false;
  } finally {
    closeSync(fd);
  }
}
