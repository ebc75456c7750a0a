import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { decodeMap, type ChunkMap } from './chunk-map.js';

/** A .tmp older than this is a crash's leftover (a put takes well under a second). */
const STALE_TMP_MS = 10 * 60_000;
const bytesOf = (m: ChunkMap): number => m.hash.length + m.idx.byteLength + m.off.byteLength + m.pack.byteLength;

/**
 * Chunk maps of parts this host holds, by part digest: parts are immutable, so a base is never
 * downloaded or hashed again to learn its pages. `nuid` is the store object the map was read
 * from or written as ('' for one made from a local file: its pack locations mean nothing).
 * Bounded by bytes, in memory and on disk.
 */
export class ChunkMapCache {
  readonly #mem = new Map<string, { nuid: string; map: ChunkMap }>();
  #memBytes = 0;
  #puts = 0;

  constructor(
    private readonly dir?: string,
    private readonly keepBytes = 256 << 20,
    /** Bytes of files kept on disk: the newest; a map dropped costs one re-read or re-hash. */
    private readonly keepFileBytes = 2 ** 30,
  ) {}

  #file(digest: string): string | undefined {
    return this.dir && /^[0-9a-f]{64}$/.test(digest) ? path.join(this.dir, `${digest}.fkcm`) : undefined;
  }

  async get(digest: string): Promise<{ nuid: string; map: ChunkMap } | undefined> {
    const hit = this.#mem.get(digest);
    if (hit) return hit;
    const file = this.#file(digest);
    if (!file) return undefined;
    try {
      const b = await fs.readFile(file);
      const nl = b.indexOf(10);
      const got = { nuid: b.toString('latin1', 0, nl), map: decodeMap(b.subarray(nl + 1), digest) };
      this.#remember(digest, got);
      return got;
    } catch {
      // Absent or damaged: the map is read again from the store or made from the file.
      return undefined;
    }
  }

  async put(digest: string, nuid: string, bytes: Buffer): Promise<void> {
    this.#remember(digest, { nuid, map: decodeMap(bytes, digest) });
    const file = this.#file(digest);
    if (!file) return;
    // Unique: two puts of one digest (two fetches of a shared layer) must not share a tmp file.
    const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await fs.mkdir(path.dirname(file), { recursive: true });
      await fs.writeFile(tmp, Buffer.concat([Buffer.from(`${nuid}\n`, 'latin1'), bytes]), { flag: 'wx' });
      await fs.rename(tmp, file);
      if (++this.#puts % 32 === 1) await this.#prune();
    } catch {
      // A cache that cannot be written only costs a re-read later.
      await fs.rm(tmp, { force: true });
    }
  }

  async #prune(): Promise<void> {
    const dir = this.dir as string;
    const names = await fs.readdir(dir);
    const stat = async (n: string): Promise<{ n: string; t: number; size: number }> => {
      const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
      return { n, t: st?.mtimeMs ?? 0, size: st?.size ?? 0 };
    };
    for (const x of await Promise.all(names.filter((n) => n.endsWith('.tmp')).map(stat)))
      if (x.t < Date.now() - STALE_TMP_MS) await fs.rm(path.join(dir, x.n), { force: true });
    const aged = await Promise.all(names.filter((n) => n.endsWith('.fkcm')).map(stat));
    aged.sort((x, y) => y.t - x.t);
    let total = 0;
    for (const x of aged) {
      total += x.size;
      if (total > this.keepFileBytes) await fs.rm(path.join(dir, x.n), { force: true });
    }
  }

  #remember(digest: string, v: { nuid: string; map: ChunkMap }): void {
    const old = this.#mem.get(digest);
    if (old) this.#memBytes -= bytesOf(old.map);
    this.#mem.delete(digest);
    this.#mem.set(digest, v);
    this.#memBytes += bytesOf(v.map);
    for (const [k, x] of this.#mem) {
      if (this.#memBytes <= this.keepBytes || this.#mem.size <= 1) break;
      this.#mem.delete(k);
      this.#memBytes -= bytesOf(x.map);
    }
  }
}
