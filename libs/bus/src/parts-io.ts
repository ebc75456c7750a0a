import fs from 'node:fs/promises';
import type { NatsConnection } from '@nats-io/nats-core';
import type { ObjectInfo, ObjectStore } from '@nats-io/obj';
import { CorruptPartError, MAX_MAP_BYTES, PAGE } from './chunk-map.js';
import { readFull, type Scan } from './chunk-scan.js';
import { streamObject } from './obj-stream.js';

export const PARTS_BUCKET = 'forky_parts';
/** Object metadata that marks a part's object as a chunk map (older parts are sparse-encoded). */
export const KIND = 'chunks/1';

/**
 * Streams the scan's new pages into their pack, in pack order: 1 MiB at a time, its runs of
 * adjacent pages read all at once (a RAM part's pages are scattered).
 */
export async function putPack(os: ObjectStore, file: string, scan: Scan, name: string): Promise<number> {
  const fh = await fs.open(file, 'r');
  const fresh = scan.fresh;
  let k = 0;
  let sent = 0;
  const rs = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      if (k >= fresh.length) return ctl.close();
      const pages = Math.min(256, fresh.length - k);
      const buf = Buffer.alloc(pages * PAGE);
      const reads: Promise<number>[] = [];
      for (let at = 0; at < pages;) {
        let n = 1;
        while (at + n < pages && fresh[k + at + n] === (fresh[k + at] as number) + n) n++;
        reads.push(readFull(fh, buf.subarray(at * PAGE, (at + n) * PAGE), n * PAGE, (fresh[k + at] as number) * PAGE));
        at += n;
      }
      await Promise.all(reads);
      k += pages;
      sent += buf.length;
      ctl.enqueue(buf);
    },
  });
  try {
    await os.put({ name, options: { max_chunk_size: 1 << 20 } }, rs, { previousRevision: 0, timeout: 30_000 });
    return sent;
  } finally {
    await fh.close();
  }
}

/** A map object's bytes, read whole but never more than its declared size, itself bounded. */
export async function readMap(nc: NatsConnection, info: ObjectInfo, digest: string, signal: AbortSignal): Promise<Buffer> {
  if (info.size > MAX_MAP_BYTES)
    throw new CorruptPartError(`part ${digest}: its chunk map is ${info.size} bytes, more than ${MAX_MAP_BYTES}`, { field: 'size' });
  const out = Buffer.alloc(info.size);
  let at = 0;
  await streamObject(
    nc,
    PARTS_BUCKET,
    info,
    (d) => {
      if (at + d.length > out.length)
        throw new CorruptPartError(`part ${digest}: its chunk map is longer than it declares`, { field: 'size' });
      out.set(d, at);
      at += d.length;
      return true;
    },
    signal,
  );
  if (at !== out.length)
    throw new CorruptPartError(`part ${digest}: its chunk map ended after ${at} of ${out.length} bytes`, { field: 'size' });
  return out;
}

export function blobStream(b: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(ctl) {
      ctl.enqueue(b);
      ctl.close();
    },
  });
}
