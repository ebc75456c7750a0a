import fs from 'node:fs/promises';

/**
 * Digests of files hashed here, by path. A part's file never changes, but a path may be used
 * again for another file: an entry holds only while the file's identity, size and mtime are the same.
 */
export class DigestMemo {
  readonly #m = new Map<string, { digest: string; size: number; id: string }>();
  static async #id(file: string): Promise<string | undefined> {
    const st = await fs.stat(file, { bigint: true }).catch(() => undefined);
    // Not ctime: a chmod or chown (hostd hands files to QEMU's user) changes no content.
    return st && `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
  }
  async get(file: string): Promise<{ digest: string; size: number } | undefined> {
    const e = this.#m.get(file);
    if (!e) return undefined;
    if (e.id === (await DigestMemo.#id(file))) return { digest: e.digest, size: e.size };
    this.#m.delete(file);
    return undefined;
  }
  async set(file: string, d: { digest: string; size: number }): Promise<void> {
    const id = await DigestMemo.#id(file);
    if (id) this.#m.set(file, { ...d, id });
  }
}
