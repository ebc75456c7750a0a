import fs from 'node:fs/promises';
import { ForkyError, NotFoundError } from '@forky/base';
import type { Layout } from '../../layout.js';
import type { AppLayerStore, PartStore } from '../../domain/ports.js';

/**
 * App layers on this host's disk, `<dataDir>/apps/<sha256>.ext4`, fetched from the part store
 * (verified by digest on the way) the first time a VM here needs one. Readable by all: QEMU,
 * dropped to its own user, opens a hot-plugged layer after the drop.
 */
export class LocalAppLayers implements AppLayerStore {
  readonly #fetching = new Map<string, Promise<{ fetched: boolean; receivedBytes: number }>>();

  constructor(
    private readonly layout: Layout,
    private readonly parts?: PartStore,
  ) {}

  path(digest: string): string {
    return this.layout.appLayer(digest);
  }

  ensure(digest: string, timeoutMs: number): Promise<{ fetched: boolean; receivedBytes: number }> {
    // One fetch per layer however many VMs ask for it at once.
    let p = this.#fetching.get(digest);
    if (!p) {
      p = this.#ensure(digest, timeoutMs).finally(() => this.#fetching.delete(digest));
      this.#fetching.set(digest, p);
    }
    return p;
  }

  async #ensure(digest: string, timeoutMs: number): Promise<{ fetched: boolean; receivedBytes: number }> {
    const file = this.path(digest);
    if (
      await fs.access(file).then(
        () => true,
        () => false,
      )
    )
      return { fetched: false, receivedBytes: 0 };
    if (!this.parts) throw new NotFoundError('app layer', digest);
    if (!(await this.parts.has(digest))) {
      throw new ForkyError('NOT_FOUND', `app layer ${digest} is in no store: upload it first (forky does, for --app)`, {
        details: { field: 'apps' },
      });
    }
    await fs.mkdir(this.layout.appsDir(), { recursive: true, mode: 0o755 });
    await fs.chmod(this.layout.appsDir(), 0o755);
    const { receivedBytes } = await this.parts.download(digest, file, timeoutMs);
    await fs.chmod(file, 0o444);
    return { fetched: true, receivedBytes };
  }

  async size(digest: string): Promise<number> {
    return (await fs.stat(this.path(digest))).size;
  }

  async list(): Promise<string[]> {
    const names = await fs.readdir(this.layout.appsDir()).catch(() => [] as string[]);
    return names.filter((n) => /^[0-9a-f]{64}\.ext4$/.test(n)).map((n) => n.slice(0, 64));
  }

  async remove(digest: string): Promise<void> {
    await fs.rm(this.path(digest), { force: true });
  }
}
