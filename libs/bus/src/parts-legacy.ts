import fs from 'node:fs/promises';
import type { NatsConnection } from '@nats-io/nats-core';
import type { ObjectStore } from '@nats-io/obj';
import { withDeadline } from '@forky/base';
import { CorruptPartError } from './chunk-map.js';
import { streamObject } from './obj-stream.js';
import { SparseWriter, encodeSparse } from './sparse.js';

/*
 * Parts as one sparse-encoded object (sparse.ts): how every part was stored before chunk maps,
 * and still how a part too large for a map is. Read for compatibility with older publishers.
 */

export async function uploadSparse(os: ObjectStore, file: string, name: string): Promise<number> {
  const stats = { sent: 0 };
  const gen = encodeSparse(file, stats);
  const rs = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      const r = await gen.next();
      if (r.done) ctl.close();
      else ctl.enqueue(r.value);
    },
  });
  await os.put({ name, options: { max_chunk_size: 1 << 20 } }, rs);
  return stats.sent;
}

/** Rebuilds `tmp` from the object, verifies it is `digest`, and renames it to `dest`. */
export async function downloadSparse(
  nc: NatsConnection,
  bucket: string,
  info: { nuid: string; chunks: number },
  digest: string,
  paths: { tmp: string; dest: string },
  timeoutMs: number,
  size?: number,
): Promise<{ receivedBytes: number }> {
  const fh = await fs.open(paths.tmp, 'wx');
  const ac = new AbortController();
  const writer = new SparseWriter(fh, size, ac.signal);
  try {
    const pump = streamObject(
      nc,
      bucket,
      info,
      async (d) => {
        await writer.push(d);
        return true;
      },
      ac.signal,
    );
    // After a deadline the pump may still fail on the closed file: that is expected, not unhandled.
    pump.catch(() => undefined);
    await withDeadline(pump, timeoutMs, `fetching part ${digest.slice(0, 12)}`).finally(() => ac.abort());
    const got = writer.digest();
    if (got !== digest) throw new CorruptPartError(`part ${digest} arrived with digest ${got}`, { field: 'digest' });
    await fh.close();
    await fs.rename(paths.tmp, paths.dest);
    return { receivedBytes: writer.received };
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fs.rm(paths.tmp, { force: true });
    throw e;
  }
}
