import fs from 'node:fs/promises';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { Objm, setSha256Backend, type ObjectStore } from '@nats-io/obj';
import { ForkyError, withDeadline } from '@forky/base';
import { bindExisting, createOrOpen } from './buckets.js';
import { SparseWriter, digestFile, encodeSparse } from './sparse.js';

export const PARTS_BUCKET = 'forky_parts';

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes that went on the wire (0 when the part was already there). */
  sentBytes: number;
  skipped: boolean;
}
const name = (digest: string): string => `sha256-${digest}`;

/**
 * Snapshot parts in the JetStream object store, by content address. Reading goes through an
 * ordered consumer on the object's chunk subject, a few messages at a time, so memory stays flat
 * whatever the part size (the object store's own get() buffers without backpressure).
 */
export class ObjectPartStore {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly os: ObjectStore,
  ) {}

  static async open(nc: NatsConnection, replicas = 1): Promise<ObjectPartStore> {
    // The object store hashes every chunk; the default pure-JS sha256 is several times slower.
    setSha256Backend('native');
    const objm = new Objm(nc);
    const os = await createOrOpen(
      () => objm.create(PARTS_BUCKET, { replicas, description: 'forky: snapshot parts by sha256' }),
      () => bindExisting(objm.open(PARTS_BUCKET)),
      `object store ${PARTS_BUCKET}`,
    );
    return new ObjectPartStore(nc, os);
  }

  async has(digest: string): Promise<boolean> {
    const info = await this.os.info(name(digest));
    return !!info && !info.deleted;
  }

  /** Digests of parts already hashed here; parts are immutable, so a path's digest never changes. */
  readonly #digests = new Map<string, { digest: string; size: number }>();

  async upload(file: string, known?: { digest: string; size: number }): Promise<UploadResult> {
    const { digest, size } = known ?? this.#digests.get(file) ?? (await digestFile(file));
    this.#digests.set(file, { digest, size });
    if (await this.has(digest)) return { digest, size, sentBytes: 0, skipped: true };
    const stats = { sent: 0 };
    const gen = encodeSparse(file, stats);
    const rs = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        const r = await gen.next();
        if (r.done) ctl.close();
        else ctl.enqueue(r.value);
      },
    });
    await this.os.put({ name: name(digest), options: { max_chunk_size: 1 << 20 } }, rs);
    return { digest, size, sentBytes: stats.sent, skipped: false };
  }

  async download(digest: string, dest: string, timeoutMs: number): Promise<{ receivedBytes: number }> {
    const info = await this.os.info(name(digest));
    if (!info || info.deleted) throw new ForkyError('NOT_FOUND', `part ${digest} is not in the object store`);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    const tmp = `${dest}.partial`;
    const fh = await fs.open(tmp, 'w');
    const writer = new SparseWriter(fh);
    try {
      const js = jetstream(this.nc);
      const consumer = await js.consumers.get(`OBJ_${PARTS_BUCKET}`, { filter_subjects: `$O.${PARTS_BUCKET}.C.${info.nuid}` });
      // At most 16 chunks of 1 MiB in flight: memory stays bounded, the pipe stays full.
      const messages = await consumer.consume({ max_messages: 16 });
      const pump = (async () => {
        let seen = 0;
        for await (const m of messages) {
          await writer.push(m.data);
          if (++seen >= info.chunks) break;
        }
      })();
      // After a deadline the pump may still fail on the closed file: that is expected, not unhandled.
      pump.catch(() => undefined);
      await withDeadline(pump, timeoutMs, `fetching part ${digest.slice(0, 12)}`).finally(() => void messages.close());
      const got = writer.digest();
      if (got !== digest) throw new ForkyError('INTERNAL', `part ${digest} arrived with digest ${got}`);
      await fh.close();
      await fs.rename(tmp, dest);
      return { receivedBytes: writer.received };
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      throw e;
    }
  }

  async putManifest(id: string, manifest: unknown): Promise<void> {
    await this.os.putBlob({ name: `manifest.${id}` }, new TextEncoder().encode(JSON.stringify(manifest)));
  }

  async getManifest(id: string): Promise<unknown> {
    const b = await this.os.getBlob(`manifest.${id}`);
    if (!b) throw new ForkyError('NOT_FOUND', `snapshot ${id} has not been published`);
    return JSON.parse(new TextDecoder().decode(b)) as unknown;
  }

  async deleteManifest(id: string): Promise<void> {
    await this.os.delete(`manifest.${id}`).catch(() => undefined);
  }

  async sweep(graceMs: number): Promise<{ deleted: number; kept: number }> {
    const all = (await this.os.list()).filter((o) => !o.deleted);
    const used = new Set<string>();
    for (const o of all.filter((x) => x.name.startsWith('manifest.'))) {
      const m = (await this.getManifest(o.name.slice('manifest.'.length)).catch(() => undefined)) as
        { chain?: unknown; state?: unknown; ram?: unknown; image?: { kernel?: unknown; initrd?: unknown }; apps?: unknown } | undefined;
      if (!m || typeof m !== 'object') continue;
      // Any host may write a manifest: one of the wrong shape names no parts, and stops no sweep.
      const image = m.image && typeof m.image === 'object' ? [m.image.kernel, m.image.initrd] : [];
      for (const p of [...(Array.isArray(m.chain) ? m.chain : []), m.state, m.ram, ...image]) {
        const digest = (p as { digest?: unknown } | null | undefined)?.digest;
        if (typeof digest === 'string') used.add(name(digest));
      }
      // App layers are parts under their own digest.
      for (const a of Array.isArray(m.apps) ? m.apps : []) {
        const layer = (a as { layer?: unknown } | null | undefined)?.layer;
        if (typeof layer === 'string') used.add(name(layer));
      }
    }
    let deleted = 0;
    let kept = 0;
    const cutoff = Date.now() - graceMs;
    for (const o of all.filter((x) => x.name.startsWith('sha256-'))) {
      if (used.has(o.name) || Date.parse(o.mtime) > cutoff) {
        kept++;
        continue;
      }
      await this.os.delete(o.name);
      deleted++;
    }
    return { deleted, kept };
  }
}
