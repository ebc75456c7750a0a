import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { DeadlineError, ValidationError } from '@forky/base';

/** An object's nuid as the library makes them; anything else could widen the chunk subject (`*`, `>`). */
const NUID = /^[A-Za-z0-9]{22}$/;
/** No chunk for this long while chunks are still due: the object was purged, replaced or lies about its count. */
export const IDLE_MS = 30_000;

/**
 * Streams an object's chunks through an ordered consumer on its chunk subject, a few messages
 * at a time, so memory stays flat whatever the object's size (the object store's own get()
 * buffers without backpressure). `onChunk` returns false to stop early. Resolves with the
 * number of chunks seen; an abort closes the consumer, and so does `idleMs` without a chunk.
 */
export async function streamObject(
  nc: NatsConnection,
  bucket: string,
  info: { nuid: string; chunks: number },
  onChunk: (data: Uint8Array) => Promise<boolean> | boolean,
  signal?: AbortSignal,
  idleMs = IDLE_MS,
): Promise<number> {
  if (info.chunks === 0) return 0;
  if (!NUID.test(info.nuid))
    throw new ValidationError(`object nuid ${JSON.stringify(info.nuid).slice(0, 40)} is malformed`, { field: 'nuid' });
  signal?.throwIfAborted();
  const js = jetstream(nc);
  const consumer = await js.consumers.get(`OBJ_${bucket}`, { filter_subjects: `$O.${bucket}.C.${info.nuid}` });
  // The listener goes on before the consume is awaited: an abort meanwhile is not missed.
  let messages: { close(): Promise<void | Error> } | undefined;
  let aborted = false;
  const stop = (): void => {
    aborted = true;
    void messages?.close();
  };
  signal?.addEventListener('abort', stop, { once: true });
  let idle: NodeJS.Timeout | undefined;
  let idled = false;
  try {
    signal?.throwIfAborted();
    // At most 32 chunks of 1 MiB in flight: memory stays bounded, the pipe stays full.
    const iter = await consumer.consume({ max_messages: 32 });
    messages = iter;
    if (aborted) void iter.close();
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        idled = true;
        void iter.close();
      }, idleMs);
    };
    arm();
    let seen = 0;
    for await (const m of iter) {
      seen++;
      arm();
      if (!(await onChunk(m.data)) || seen >= info.chunks) break;
    }
    signal?.throwIfAborted();
    if (idled && seen < info.chunks) throw new DeadlineError(`object ${info.nuid}: chunk ${seen + 1} of ${info.chunks}`, idleMs);
    return seen;
  } finally {
    clearTimeout(idle);
    signal?.removeEventListener('abort', stop);
    void messages?.close();
  }
}
