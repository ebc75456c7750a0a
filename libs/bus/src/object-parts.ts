import fs from 'node:fs/promises';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, setSha256Backend, type ObjectInfo, type ObjectStore } from '@nats-io/obj';
import { randomBytes } from 'node:crypto';
import { ForkyError, withDeadline } from '@forky/base';
import { bindExisting, createOrOpen } from './buckets.js';
import { ChunkMapCache } from './chunk-cache.js';
import { CorruptPartError, MAX_DEPTH, decodeMap, encodeMap, mapBytes, type ChunkMap } from './chunk-map.js';
import { applyDelta, diffMap } from './chunk-delta.js';
import { TooLargeForMap, scanFile, type Scan } from './chunk-scan.js';
import { KIND, PARTS_BUCKET, blobStream, putPack, readMap } from './parts-io.js';
import { downloadSparse, uploadSparse } from './parts-legacy.js';
import { named, refsOf, sweepParts } from './parts-sweep.js';
import { liveInfo, packName, partName as name, partState } from './parts-check.js';
import { DigestMemo } from './digest-memo.js';
import { fetchMapped, type FetchContext } from './parts-fetch.js';
import { digestFile } from './sparse.js';
import { PublishMarkers, waitManifest } from './parts-publishing.js';

export interface UploadResult {
  digest: string;
  size: number;
  /** Bytes that went on the wire (0 when the part was already there). */
  sentBytes: number;
  skipped: boolean;
  /** Stored as a chunk map: a manifest naming it is v 2 (hosts before chunk maps cannot read it). */
  chunked?: boolean;
}
/** Pack names in the map object's metadata up to this length, so a sweep need not read the map. */
const META_PACKS_MAX = 32 << 10;

export interface PartStoreOptions {
  /** Where chunk maps of parts this host holds are kept (memory only without). */
  cacheDir?: string;
  /** Upload as before chunk maps (one sparse-encoded object a part): for comparisons only. */
  sparse?: boolean;
  /** Deadline of an upload's and a sweep's reads of the store (default 10 min). */
  timeoutMs?: number;
  /** Publish markers' renewal, and how long one not renewed is taken for a live publish (parts-publishing.ts). */
  markers?: { refreshMs?: number; staleMs?: number };
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
  readonly #markers: PublishMarkers;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly os: ObjectStore,
    private readonly opts: PartStoreOptions,
  ) {
    this.#cache = new ChunkMapCache(opts.cacheDir);
    this.#markers = new PublishMarkers(os, opts.markers?.refreshMs);
  }

  get #ctx(): FetchContext {
    return {
      nc: this.nc,
      cache: this.#cache,
      digests: this.#digests,
      info: (o) => this.#info(o),
      resolve: (m, d, s) => this.#resolve(m, d, s),
    };
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

  #info(object: string): Promise<ObjectInfo | undefined> {
    return liveInfo(this.os, object);
  }

  #deadline(): AbortSignal {
    return AbortSignal.timeout(this.opts.timeoutMs ?? 600_000);
  }

  /**
   * Puts a part in the store unless it is there. With `base`, the local path of a part the store
   * already has (a lineage parent's file), only pages the base lacks are sent, in one new pack.
   */
  async upload(file: string, known?: { digest: string; size: number }, base?: string): Promise<UploadResult> {
    const signal = this.#deadline();
    const had = known ?? (await this.#digests.get(file));
    // A part there but broken (a sweep took its base or packs) is put again, whole, over it.
    let st = had ? await partState(this.os, this.nc, had.digest, signal) : undefined;
    if (had && st?.intact) return { ...had, sentBytes: 0, skipped: true, chunked: st.chunked };
    const broken = !!st?.present;
    let scan: Scan;
    let parent: StoreBase | undefined;
    try {
      if (this.opts.sparse) throw new TooLargeForMap('sparse-encoded by option');
      ({ scan, base: parent } = await this.#scan(file, had?.digest, broken ? undefined : base, signal));
    } catch (e) {
      if (!(e instanceof TooLargeForMap)) throw e;
      const d = had ?? (await digestFile(file));
      return { ...d, sentBytes: await uploadSparse(this.os, file, name(d.digest)), skipped: false, chunked: false };
    }
    const { digest, size } = scan;
    const full = scan.map;
    await this.#digests.set(file, { digest, size });
    if (!had) {
      st = await partState(this.os, this.nc, digest, signal);
      if (st.intact) return { digest, size, sentBytes: 0, skipped: true, chunked: st.chunked };
    }
    let sent = 0;
    if (scan.fresh.length && !(await this.#info(packName(scan.packDigest))))
      // Conditional: of two hosts putting one pack, the loser's put fails (its chunks purged), not the winner's object.
      sent += await putPack(this.os, file, scan, packName(scan.packDigest)).catch(async (e: unknown) => {
        if (await this.#info(packName(scan.packDigest))) return 0;
        throw e;
      });
    // A sweep may have taken a base's pack since its map was read: then the part goes without the base.
    const gone = await Promise.all(full.packs.map(async (p) => !(await this.#info(packName(p)))));
    if (gone.some(Boolean)) {
      if (!parent) throw new ForkyError('UNAVAILABLE', `part ${digest}: a pack it just put is gone from the store`);
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
    let info: ObjectInfo;
    try {
      const meta = { name: name(digest), metadata, options: { max_chunk_size: 1 << 20 } };
      info = await this.os.put(meta, blobStream(bytes), { previousRevision: st?.revision ?? 0, timeout: 30_000 });
    } catch (e) {
      // Another host put it meanwhile: theirs stands if whole.
      const now = await partState(this.os, this.nc, digest, signal);
      if (now.intact) return { digest, size, sentBytes: sent, skipped: true, chunked: now.chunked };
      throw e;
    }
    await this.#cache.put(digest, info.nuid, encodeMap({ ...full, depth: stored.depth }));
    return { digest, size, sentBytes: sent + bytes.length, skipped: false, chunked: true };
  }

  async #scan(
    file: string,
    digest: string | undefined,
    base: string | undefined,
    signal: AbortSignal,
  ): Promise<{ scan: Scan; base?: StoreBase }> {
    const fh = await fs.open(file, 'r');
    const b = base ? await this.#storeBase(base, signal).catch(() => undefined) : undefined;
    try {
      return { scan: await scanFile(fh, { digest, ...(b ? { base: b } : {}) }), ...(b ? { base: b } : {}) };
    } finally {
      await fh.close();
      await b?.fh.close();
    }
  }

  /** A base for an upload: its map as the store has it now, and an open handle; none if the store lacks it. */
  async #storeBase(file: string, signal: AbortSignal): Promise<StoreBase | undefined> {
    const d = (await this.#digests.get(file)) ?? (await digestFile(file));
    await this.#digests.set(file, d);
    const info = await this.#info(name(d.digest));
    if (info?.metadata?.forky !== KIND) return undefined;
    // By digest: the same content has the same pages; pack locations are checked after the scan.
    const cached = await this.#cache.get(d.digest);
    let map = cached?.nuid ? cached.map : undefined;
    if (!map) {
      const bytes = await readMap(this.nc, info, d.digest, signal);
      map = await this.#resolve(decodeMap(bytes, d.digest), d.digest, signal);
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
    // Against the base part as the store has it now (any object of that digest has the same pages),
    // so a replaced base does not break its descendants. A map made from a local file ('') names no packs.
    const cached = await this.#cache.get(base.digest);
    if (cached?.nuid) return applyDelta(map, cached.map);
    const info = await this.#info(name(base.digest));
    if (!info)
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
  async download(digest: string, dest: string, timeoutMs: number, base?: string, size?: number): Promise<{ receivedBytes: number }> {
    const info = await this.#info(name(digest));
    if (!info) throw new ForkyError('NOT_FOUND', `part ${digest} is not in the object store`);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    // Unique and exclusive: two fetches of one layer must not write one file.
    const paths = { tmp: `${dest}.${randomBytes(6).toString('hex')}.partial`, dest };
    if (info.metadata?.forky !== KIND) return downloadSparse(this.nc, PARTS_BUCKET, info, digest, paths, timeoutMs, size);
    const ac = new AbortController();
    const work = fetchMapped(this.#ctx, info, digest, paths, base, ac.signal, size);
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

  /**
   * Puts the manifest, then checks what it names is whole (a sweep that listed before this
   * publish may have taken a base or packs): resolves with the parts that are not, to put again.
   */
  async putManifest(id: string, manifest: unknown): Promise<{ broken: string[] }> {
    await this.os.putBlob({ name: `manifest.${id}` }, new TextEncoder().encode(JSON.stringify(manifest)));
    const signal = this.#deadline();
    const broken: string[] = [];
    for (const d of new Set(named(manifest as Parameters<typeof named>[0])))
      if (!(await partState(this.os, this.nc, d, signal)).intact) broken.push(d);
    return { broken };
  }

  async getManifest(id: string): Promise<unknown> {
    const b = await this.os.getBlob(`manifest.${id}`);
    if (!b) throw new ForkyError('NOT_FOUND', `snapshot ${id} has not been published`);
    return JSON.parse(new TextDecoder().decode(b)) as unknown;
  }
  /** A publish of `id` is under way from this host (renewed until ended): fetches that find no manifest wait for it. */
  markPublishing(id: string, host: string): Promise<void> {
    return this.#markers.mark(id, host);
  }
  /** The publish of `id` ended (with `failure`, the fetches waiting for it fail with it). */
  endPublishing(id: string, host: string, failure?: { code: string; message: string }): Promise<void> {
    return this.#markers.end(id, host, failure);
  }
  /** Removes the markers of publishes `host` had under way when it last stopped; how many. */
  clearMarkers(host: string): Promise<number> {
    return this.#markers.clear(host);
  }
  /** The manifest of `id`, waiting up to `timeoutMs` for a publish under way (parts-publishing.ts). */
  waitManifest(id: string, timeoutMs: number): Promise<unknown> {
    return waitManifest(this.nc, this.os, id, timeoutMs, () => this.getManifest(id), this.opts.markers?.staleMs);
  }

  async deleteManifest(id: string): Promise<void> {
    await this.os.delete(`manifest.${id}`).catch(() => undefined);
  }
  /** Deletes parts no manifest refers to and packs no kept part refers to, if older than `graceMs`. */
  async sweep(graceMs: number): Promise<{ deleted: number; kept: number }> {
    const signal = this.#deadline();
    return sweepParts(this.os, graceMs, (info) => refsOf(this.nc, info, signal));
  }
}
