import fs from 'node:fs/promises';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, setSha256Backend, type ObjectInfo, type ObjectStore } from '@nats-io/obj';
import { ForkyError, mapSettled, withDeadline } from '@forky/base';
import { bindExisting, createOrOpen } from './buckets.js';
import { assemble } from './chunk-fetch.js';
import { ChunkMapCache } from './chunk-cache.js';
import { CorruptPartError, MAX_DEPTH, decodeMap, encodeMap, mapBytes, type ChunkMap } from './chunk-map.js';
import { applyDelta, diffMap } from './chunk-delta.js';
import { TooLargeForMap, scanFile, type Scan } from './chunk-scan.js';
import { streamObject } from './obj-stream.js';
import { KIND, PARTS_BUCKET, blobStream, putPack, readMap } from './parts-io.js';
import { downloadSparse, uploadSparse } from './parts-legacy.js';
import { refsOf, sweepParts } from './parts-sweep.js';
import { DigestMemo } from './digest-memo.js';
import { digestFile } from './sparse.js';

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes that went on the wire (0 when the part was already there). */
  sentBytes: number;
  skipped: boolean;
}
const name = (digest: string): string => `sha256-${digest}`;
const packName = (digest: string): string => `pack-${digest}`;
/** Pack names in the map object's metadata up to this length, so a sweep need not read the map. */
const META_PACKS_MAX = 32 << 10;
const PARALLEL = 4;

export interface PartStoreOptions {
  /** Where chunk maps of parts this host holds are kept (memory only without). */
  cacheDir?: string;
  /** Upload as before chunk maps (one sparse-encoded object a part): for comparisons only. */
  sparse?: boolean;
}

/**
 * Snapshot parts in the JetStream object store, by content address (the whole file's sha256).
 * A part's object is a chunk map (chunk-map.ts); its pages live in packs, one per upload, holding
 * only pages the upload's base did not have. See chunk-scan.ts (upload) and chunk-fetch.ts (download).
 */
export { PARTS_BUCKET };

/** An upload's base: an open handle, its whole map as the store has it now, and that object. */
interface StoreBase {
  fh: fs.FileHandle;
  map: ChunkMap;
  digest: string;
  nuid: string;
}

export class ObjectPartStore {
  readonly #cache: ChunkMapCache;
  /** Digests of files already hashed here; parts are immutable, so a path's digest never changes. */
  readonly #digests = new DigestMemo();

  private constructor(
    private readonly nc: NatsConnection,
    private readonly os: ObjectStore,
    private readonly opts: PartStoreOptions,
  ) {
    this.#cache = new ChunkMapCache(opts.cacheDir);
  }

  static async open(nc: NatsConnection, replicas = 1, opts: PartStoreOptions = {}): Promise<ObjectPartStore> {
    // The object store hashes every chunk; the default pure-JS sha256 is several times slower.
    setSha256Backend('native');
    const objm = new Objm(nc);
    const os = await createOrOpen(
      () => objm.create(PARTS_BUCKET, { replicas, description: 'forky: snapshot parts by sha256' }),
      () => bindExisting(objm.open(PARTS_BUCKET)),
      `object store ${PARTS_BUCKET}`,
    );
    return new ObjectPartStore(nc, os, opts);
  }

  async has(digest: string): Promise<boolean> {
    const info = await this.os.info(name(digest));
    return !!info && !info.deleted;
  }

  async #info(object: string): Promise<ObjectInfo | undefined> {
    const info = await this.os.info(object);
    return info && !info.deleted ? info : undefined;
  }

  /**
   * Puts a part in the store unless it is there. With `base`, the local path of a part the store
   * already has (a lineage parent's file), only pages the base lacks are sent, in one new pack.
   */
  async upload(file: string, known?: { digest: string; size: number }, base?: string): Promise<UploadResult> {
    const had = known ?? (await this.#digests.get(file));
    if (had && (await this.has(had.digest))) return { ...had, sentBytes: 0, skipped: true };
    let scan: Scan;
    let parent: StoreBase | undefined;
    try {
      if (this.opts.sparse) throw new TooLargeForMap('sparse-encoded by option');
      ({ scan, base: parent } = await this.#scan(file, had?.digest, base));
    } catch (e) {
      if (!(e instanceof TooLargeForMap)) throw e;
      const d = had ?? (await digestFile(file));
      return { ...d, sentBytes: await uploadSparse(this.os, file, name(d.digest)), skipped: false };
    }
    const { digest, size } = scan;
    const full = scan.map;
    await this.#digests.set(file, { digest, size });
    if (!had && (await this.has(digest))) return { digest, size, sentBytes: 0, skipped: true };
    let sent = 0;
    if (scan.fresh.length && !(await this.#info(packName(scan.packDigest))))
      sent += await putPack(this.os, file, scan, packName(scan.packDigest));
    // A sweep may have taken a base's pack since its map was read: then the part goes without the base.
    const gone = await Promise.all(full.packs.map(async (p) => !(await this.#info(packName(p)))));
    if (gone.some(Boolean)) {
      if (!base) throw new ForkyError('UNAVAILABLE', `part ${digest}: a pack it just put is gone from the store`);
      return this.upload(file, { digest, size });
    }
    // A re-snapshot's map lists only what differs from its parent's, when that is much smaller.
    const delta =
      parent && parent.map.depth < MAX_DEPTH ? diffMap(full, parent.map, { digest: parent.digest, nuid: parent.nuid }) : undefined;
    const small = delta && mapBytes(delta.packs.length, delta.idx.length, true) < mapBytes(full.packs.length, full.idx.length) / 2;
    const stored = small ? delta : full;
    const bytes = encodeMap(stored);
    const packs = stored.packs.join(',');
    const metadata: Record<string, string> = {
      forky: KIND,
      ...(packs.length <= META_PACKS_MAX ? { packs } : {}),
      ...(stored.base ? { base: stored.base.digest } : {}),
    };
    const info = await this.os.put({ name: name(digest), metadata, options: { max_chunk_size: 1 << 20 } }, blobStream(bytes));
    await this.#cache.put(digest, info.nuid, encodeMap({ ...full, depth: stored.depth }));
    return { digest, size, sentBytes: sent + bytes.length, skipped: false };
  }

  async #scan(file: string, digest: string | undefined, base: string | undefined): Promise<{ scan: Scan; base?: StoreBase }> {
    const fh = await fs.open(file, 'r');
    const b = base ? await this.#storeBase(base).catch(() => undefined) : undefined;
    try {
      return { scan: await scanFile(fh, { digest, ...(b ? { base: b } : {}) }), ...(b ? { base: b } : {}) };
    } finally {
      await fh.close();
      await b?.fh.close();
    }
  }

  /** A base for an upload: its map as the store has it now, and an open handle; none if the store lacks it. */
  async #storeBase(file: string): Promise<StoreBase | undefined> {
    const d = (await this.#digests.get(file)) ?? (await digestFile(file));
    await this.#digests.set(file, d);
    const info = await this.#info(name(d.digest));
    if (info?.metadata?.forky !== KIND) return undefined;
    const cached = await this.#cache.get(d.digest);
    let map = cached?.nuid === info.nuid ? cached.map : undefined;
    if (!map) {
      const bytes = await readMap(this.nc, info, d.digest, new AbortController().signal);
      map = await this.#resolve(decodeMap(bytes, d.digest), d.digest, new AbortController().signal);
      await this.#cache.put(d.digest, info.nuid, encodeMap(map));
    }
    return { fh: await fs.open(file, 'r'), map, digest: d.digest, nuid: info.nuid };
  }

  /** The whole map of a delta: its base's (cached, or read and resolved in turn), with the delta applied. */
  async #resolve(map: ChunkMap, digest: string, signal: AbortSignal, hops = 0): Promise<ChunkMap> {
    const base = map.base;
    if (!base) return map;
    if (hops >= MAX_DEPTH)
      throw new CorruptPartError(`part ${digest}: its chunk map is deltas more than ${MAX_DEPTH} deep`, { field: 'depth' });
    const cached = await this.#cache.get(base.digest);
    if (cached?.nuid === base.nuid) return applyDelta(map, cached.map);
    const info = await this.#info(name(base.digest));
    if (info?.nuid !== base.nuid)
      throw new CorruptPartError(`part ${digest}: the base its chunk map was made against (${base.digest}) is gone from the store`, {
        field: 'base',
      });
    const bytes = await readMap(this.nc, info, base.digest, signal);
    const whole = await this.#resolve(decodeMap(bytes, base.digest), base.digest, signal, hops + 1);
    await this.#cache.put(base.digest, info.nuid, encodeMap(whole));
    return applyDelta(map, whole);
  }

  /**
   * Fetches, verifies by digest, and only then puts the part at `dest` (via a temporary name).
   * With `base`, a local file of the same lineage, pages it has are copied from it, not fetched.
   */
  async download(digest: string, dest: string, timeoutMs: number, base?: string): Promise<{ receivedBytes: number }> {
    const info = await this.#info(name(digest));
    if (!info) throw new ForkyError('NOT_FOUND', `part ${digest} is not in the object store`);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    const paths = { tmp: `${dest}.partial`, dest };
    if (info.metadata?.forky !== KIND) return downloadSparse(this.nc, PARTS_BUCKET, info, digest, paths, timeoutMs);
    const ac = new AbortController();
    const work = this.#fetchMapped(info, digest, paths, base, ac.signal);
    try {
      return await withDeadline(work, timeoutMs, `fetching part ${digest.slice(0, 12)}`);
    } catch (e) {
      ac.abort();
      // The work stops at its next step and removes what it wrote; wait for that, but not forever.
      await withDeadline(
        work.catch(() => undefined),
        10_000,
        'stopping a part fetch',
      ).catch(() => undefined);
      throw e;
    }
  }

  async #fetchMapped(
    info: ObjectInfo,
    digest: string,
    paths: { tmp: string; dest: string },
    base: string | undefined,
    signal: AbortSignal,
  ): Promise<{ receivedBytes: number }> {
    const bytes = await readMap(this.nc, info, digest, signal);
    const raw = decodeMap(bytes, digest);
    const map = await this.#resolve(raw, digest, signal);
    const packs = new Map<string, ObjectInfo>();
    const infos = await mapSettled(map.packs, 16, async (p) => {
      const pi = await this.#info(packName(p));
      if (!pi) throw new ForkyError('NOT_FOUND', `part ${digest}: its pack ${p} is not in the object store`);
      packs.set(p, pi);
    });
    for (const r of infos) if (r.status === 'rejected') throw r.reason;
    const b = base ? await this.#localBase(base).catch(() => undefined) : undefined;
    const out = await fs.open(paths.tmp, 'w+');
    try {
      const got = await assemble({
        map,
        what: digest,
        out,
        ...(b ? { base: b } : {}),
        packSize: (p) => packs.get(p)?.size ?? 0,
        readPack: (p, onChunk) => streamObject(this.nc, PARTS_BUCKET, packs.get(p) as ObjectInfo, onChunk, signal),
        signal,
        parallel: PARALLEL,
      });
      if (got.digest !== digest) throw new CorruptPartError(`part ${digest} arrived with digest ${got.digest}`, { field: 'digest' });
      await out.close();
      signal.throwIfAborted();
      await fs.rename(paths.tmp, paths.dest);
      await this.#digests.set(paths.dest, { digest, size: map.size });
      await this.#cache.put(digest, info.nuid, raw.base ? encodeMap(map) : bytes);
      return { receivedBytes: bytes.length + got.receivedBytes };
    } catch (e) {
      await out.close().catch(() => undefined);
      await fs.rm(paths.tmp, { force: true });
      throw e;
    } finally {
      await b?.fh.close();
    }
  }

  /** A base for a download: an open handle and the pages it holds (cached, or hashed once now). */
  async #localBase(file: string): Promise<{ fh: fs.FileHandle; map: ChunkMap }> {
    const fh = await fs.open(file, 'r');
    try {
      const d = await this.#digests.get(file);
      const cached = d ? await this.#cache.get(d.digest) : undefined;
      if (cached) return { fh, map: cached.map };
      const scan = await scanFile(fh, {});
      await this.#digests.set(file, { digest: scan.digest, size: scan.size });
      await this.#cache.put(scan.digest, '', encodeMap(scan.map));
      return { fh, map: scan.map };
    } catch (e) {
      await fh.close();
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

  /** Deletes parts no manifest refers to and packs no kept part refers to, if older than `graceMs`. */
  async sweep(graceMs: number): Promise<{ deleted: number; kept: number }> {
    return sweepParts(this.os, graceMs, (info) => refsOf(this.nc, info));
  }
}
