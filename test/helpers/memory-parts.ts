import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError } from '@forky/base';
import type { PartStore } from '@forky/hostd/internal';

type UploadResult = Awaited<ReturnType<PartStore['upload']>>;

/**
 * The cluster's object store in memory, for engine hosts of one test (the dry run's files are
 * tiny): parts by digest, manifests by snapshot id, and gates a test holds a transfer at.
 * `imageDisk`: the test image's disk digest, the digest of its `img-` base layer (the dry run's
 * layer file is empty). Manifests are kept without their image block: the test image's id is
 * not made from its parts, so a fetch uses the host's own image by id, as before images travelled.
 */
export class MemoryParts implements PartStore {
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, unknown>();
  /** Set by a test: the next uploads or downloads wait for it (cleared by the test). */
  uploadGate: Promise<void> | undefined;
  downloadGate: Promise<void> | undefined;
  /** Transfers held at a gate now, and who waits for one to be. */
  #held = 0;
  #arrived: Array<() => void> = [];

  constructor(private readonly imageDisk: string) {}

  /** Resolves once a transfer is held at a gate (within `ms`): a test knows it is under way. */
  atGate(ms = 2000): Promise<void> {
    if (this.#held > 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no transfer reached its gate within ${ms} ms`)), ms);
      this.#arrived.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async #gate(g: Promise<void> | undefined): Promise<void> {
    if (!g) return;
    this.#held++;
    for (const f of this.#arrived.splice(0)) f();
    try {
      await g;
    } finally {
      this.#held--;
    }
  }

  async has(digest: string): Promise<boolean> {
    return this.blobs.has(digest);
  }

  async upload(file: string, known?: { digest: string; size: number }): Promise<UploadResult> {
    await this.#gate(this.uploadGate);
    const bytes = await fs.readFile(file).catch(() => Buffer.alloc(0));
    const digest = known?.digest ?? (/^img-[0-9a-f]{32}$/.test(path.basename(file)) ? this.imageDisk : sha256(bytes));
    const skipped = this.blobs.has(digest);
    this.blobs.set(digest, bytes);
    return { digest, size: bytes.length, sentBytes: skipped ? 0 : bytes.length, skipped };
  }

  async download(digest: string, dest: string): Promise<{ receivedBytes: number }> {
    await this.#gate(this.downloadGate);
    const bytes = this.blobs.get(digest);
    if (!bytes) throw new ForkyError('NOT_FOUND', `part ${digest} is not in the store`);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    await fs.writeFile(dest, bytes);
    return { receivedBytes: bytes.length };
  }

  async putManifest(id: string, manifest: unknown): Promise<void> {
    const { image: _image, ...rest } = manifest as Record<string, unknown>;
    this.manifests.set(id, JSON.parse(JSON.stringify(rest)) as unknown);
  }

  async getManifest(id: string): Promise<unknown> {
    const m = this.manifests.get(id);
    if (m === undefined) throw new ForkyError('NOT_FOUND', `snapshot ${id} has not been published`);
    return JSON.parse(JSON.stringify(m)) as unknown;
  }

  /** Nothing is published across hosts here: a manifest not put is none, at once. */
  async waitManifest(id: string): Promise<unknown> {
    return this.getManifest(id);
  }

  async deleteManifest(id: string): Promise<void> {
    this.manifests.delete(id);
  }

  async markPublishing(): Promise<void> {}

  async endPublishing(): Promise<void> {}

  async sweep(): Promise<{ deleted: number; kept: number }> {
    return { deleted: 0, kept: this.blobs.size };
  }
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
