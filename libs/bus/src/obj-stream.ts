import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';

/**
 * Streams an object's chunks through an ordered consumer on its chunk subject, a few messages
 * at a time, so memory stays flat whatever the object's size (the object store's own get()
 * buffers without backpressure). `onChunk` returns false to stop early. Resolves with the
 * number of chunks seen; an abort closes the consumer.
 */
export async function streamObject(
  nc: NatsConnection,
  bucket: string,
  info: { nuid: string; chunks: number },
  onChunk: (data: Uint8Array) => Promise<boolean> | boolean,
  signal?: AbortSignal,
): Promise<number> {
  if (info.chunks === 0) return 0;
  const js = jetstream(nc);
  const consumer = await js.consumers.get(`OBJ_${bucket}`, { filter_subjects: `$O.${bucket}.C.${info.nuid}` });
  signal?.throwIfAborted();
  // At most 32 chunks of 1 MiB in flight: memory stays bounded, the pipe stays full.
  const messages = await consumer.consume({ max_messages: 32 });
  const stop = (): void => void messages.close();
  signal?.addEventListener('abort', stop, { once: true });
  let seen = 0;
  try {
    for await (const m of messages) {
      seen++;
      if (!(await onChunk(m.data)) || seen >= info.chunks) break;
    }
    signal?.throwIfAborted();
    return seen;
  } finally {
    signal?.removeEventListener('abort', stop);
    stop();
  }
}
