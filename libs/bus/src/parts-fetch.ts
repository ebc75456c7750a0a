import fs from 'node:fs/promises';
import type { NatsConnection } from '@nats-io/nats-core';
import type { ObjectInfo } from '@nats-io/obj';
import { ForkyError, mapSettled } from '@forky/base';
import { assemble } from './chunk-fetch.js';
import type { ChunkMapCache } from './chunk-cache.js';
import { CorruptPartError, decodeMap, encodeMap, type ChunkMap } from './chunk-map.js';
import { scanFile } from './chunk-scan.js';
import type { DigestMemo } from './digest-memo.js';
import { streamObject } from './obj-stream.js';
import { PARTS_BUCKET, readMap } from './parts-io.js';
import { packName } from './parts-check.js';

const PARALLEL = 4;

/** What a chunked part's fetch needs of its store (object-parts.ts). */
export interface FetchContext {
  nc: NatsConnection;
  cache: ChunkMapCache;
  digests: DigestMemo;
  info: (object: string) => Promise<ObjectInfo | undefined>;
  resolve: (map: ChunkMap, digest: string, signal: AbortSignal) => Promise<ChunkMap>;
}

/** Fetches a chunked part into `paths.tmp`, verifies it, and renames it to `paths.dest`. */
export async function fetchMapped(
  ctx: FetchContext,
  info: ObjectInfo,
  digest: string,
  paths: { tmp: string; dest: string },
  base: string | undefined,
  signal: AbortSignal,
  size: number | undefined,
): Promise<{ receivedBytes: number }> {
  const bytes = await readMap(ctx.nc, info, digest, signal);
  const raw = decodeMap(bytes, digest);
  // The manifest's size, itself bounded by the snapshot's profile: a map may not declare its own.
  if (size !== undefined && raw.size !== size)
    throw new CorruptPartError(`part ${digest}: its chunk map declares ${raw.size} bytes, its manifest ${size}`, { field: 'size' });
  const map = await ctx.resolve(raw, digest, signal);
  const packs = new Map<string, ObjectInfo>();
  const infos = await mapSettled(map.packs, 16, async (p) => {
    const pi = await ctx.info(packName(p));
    if (!pi) throw new ForkyError('NOT_FOUND', `part ${digest}: its pack ${p} is not in the object store`);
    packs.set(p, pi);
  });
  for (const r of infos) if (r.status === 'rejected') throw r.reason;
  const b = base ? await localBase(ctx, base).catch(() => undefined) : undefined;
  const out = await fs.open(paths.tmp, 'wx+');
  try {
    const got = await assemble({
      map,
      what: digest,
      out,
      ...(b ? { base: b } : {}),
      packSize: (p) => packs.get(p)?.size ?? 0,
      readPack: (p, onChunk) => streamObject(ctx.nc, PARTS_BUCKET, packs.get(p) as ObjectInfo, onChunk, signal),
      signal,
      parallel: PARALLEL,
    });
    if (got.digest !== digest) throw new CorruptPartError(`part ${digest} arrived with digest ${got.digest}`, { field: 'digest' });
    await out.close();
    signal.throwIfAborted();
    await fs.rename(paths.tmp, paths.dest);
    await ctx.digests.set(paths.dest, { digest, size: map.size });
    // Its page hashes are trusted for reuse only if the pages that came matched them.
    if (got.pagesOk) await ctx.cache.put(digest, info.nuid, raw.base ? encodeMap(map) : bytes);
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
async function localBase(ctx: FetchContext, file: string): Promise<{ fh: fs.FileHandle; map: ChunkMap }> {
  const fh = await fs.open(file, 'r');
  try {
    const d = await ctx.digests.get(file);
    const cached = d ? await ctx.cache.get(d.digest) : undefined;
    if (cached) return { fh, map: cached.map };
    const scan = await scanFile(fh, {});
    await ctx.digests.set(file, { digest: scan.digest, size: scan.size });
    // Not over the store's map of it: that one's pack locations serve uploads.
    if (!(await ctx.cache.get(scan.digest))) await ctx.cache.put(scan.digest, '', encodeMap(scan.map));
    return { fh, map: scan.map };
  } catch (e) {
    await fh.close();
    throw e;
  }
}
