import fs from 'node:fs/promises';
import path from 'node:path';
import { decodeMap, type ChunkMap } from './chunk-map.js';

/**
 * Chunk maps of parts this host holds, by part digest: parts are immutable, so a base is never
 * downloaded or hashed again to learn its pages. `nuid` is the store object the map was read
 * from or written as ('' for one made from a local file): an uploader reuses a base's pack
 * locations only while the store still has that very object.
 */
export class ChunkMapCache {
  readonly #mem = new Map<string, { nuid: string; map: ChunkMap }>();
  #puts = 0;

  constructor(
    private readonly dir?: string,
    private readonly keep = 16,
    /** Files kept on disk: the newest; a map dropped costs one re-read or re-hash. */
    private readonly keepFiles = 512,
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
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      await fs.mkdir(path.dirname(file), { recursive: true });
      await fs.writeFile(tmp, Buffer.concat([Buffer.from(`${nuid}\n`, 'latin1'), bytes]));
      await fs.rename(tmp, file);
      if (++this.#puts % 32 === 0) await this.#prune();
    } catch {
      // A cache that cannot be written only costs a re-read later.
      await fs.rm(tmp, { force: true });
    }
  }

  async #prune(): Promise<void> {
    const dir = this.dir as string;
    const names = (await fs.readdir(dir)).filter((n) => n.endsWith('.fkcm'));
    if (names.length <= this.keepFiles) return;
    const aged = await Promise.all(
      names.map(async (n) => ({ n, t: (await fs.stat(path.join(dir, n)).catch(() => undefined))?.mtimeMs ?? 0 })),
    );
    aged.sort((x, y) => y.t - x.t);
    for (const { n } of aged.slice(this.keepFiles)) await fs.rm(path.join(dir, n), { force: true });
  }

  #remember(digest: string, v: { nuid: string; map: ChunkMap }): void {
    this.#mem.delete(digest);
    this.#mem.set(digest, v);
    for (const k of this.#mem.keys()) {
      if (this.#mem.size <= this.keep) break;
      this.#mem.delete(k);
    }
  }
}
