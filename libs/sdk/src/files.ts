import { ForkyError, newId } from '@forky/base';
import type { StreamChunk } from '@forky/bus';
import type { SchedReplyOf } from '@forky/contract';
import { endError } from './process.js';
import type { CallOptions, Calls, StreamLike } from './transport.js';
import { watch, type FileWatch, type WatchOptions } from './watch.js';

const CHUNK = 64 * 1024;
const READ_MAX = 64 * 2 ** 20;

export type FileEntry = SchedReplyOf<'file.list'>['entries'][number];
export type FileStat = SchedReplyOf<'file.stat'>['stat'];

export interface ReadOptions extends CallOptions {
  offset?: number;
  length?: number;
  /** Most bytes read into memory (default 64 MiB); a longer file fails with CAPACITY (use `stream`). */
  maxBytes?: number;
}

export interface WriteOptions extends CallOptions {
  /** `truncate` (default), `create` (fails if it exists) or `append`. */
  mode?: 'truncate' | 'create' | 'append';
  /** Permission bits of a new file, e.g. 0o755. */
  perm?: number;
  /** Create missing parent directories. */
  parents?: boolean;
  /** The write's idempotency key (default: a new one). */
  key?: string;
}

/** The files of one VM, through its guest agent (libs/contract/STREAMS.md). */
export class Files {
  /** @internal */
  constructor(
    private readonly t: Calls,
    readonly vm: string,
  ) {}

  /** A file's bytes, chunk by chunk as they come (the guest waits while nobody reads). */
  async *stream(path: string, o: Omit<ReadOptions, 'maxBytes'> = {}): AsyncGenerator<Uint8Array> {
    const body = { id: this.vm, path, ...(o.offset ? { offset: o.offset } : {}), ...(o.length !== undefined ? { length: o.length } : {}) };
    const st = await this.t.stream('file.read', body, o);
    const onAbort = (): void => st.cancel();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    let ended = false;
    try {
      for await (const c of st as AsyncIterable<StreamChunk>) {
        if (c.kind === 'data') yield c.bytes;
        else if (c.kind === 'end') {
          ended = true;
          o.signal?.throwIfAborted();
          if (!c.end.ok) throw endError(c.end);
          return;
        }
      }
      throw new ForkyError('UNAVAILABLE', `reading ${path}: the stream ended without its end message`);
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      // Left before its end (the reader stopped, or failed): the guest stops reading now.
      if (!ended) st.cancel();
      st.close();
    }
  }

  async read(path: string, o: ReadOptions = {}): Promise<Buffer> {
    const max = o.maxBytes ?? READ_MAX;
    const parts: Uint8Array[] = [];
    let n = 0;
    for await (const b of this.stream(path, o)) {
      if ((n += b.length) > max)
        throw new ForkyError('CAPACITY', `${path} is longer than ${max} bytes (maxBytes)`, { details: { field: 'maxBytes' } });
      parts.push(b);
    }
    return Buffer.concat(parts);
  }

  async readText(path: string, o: ReadOptions = {}): Promise<string> {
    return (await this.read(path, o)).toString('utf8');
  }

  /** Writes a whole file (under an idempotency key: a lost reply re-sent does not append twice). */
  async write(path: string, data: string | Uint8Array | AsyncIterable<Uint8Array>, o: WriteOptions = {}): Promise<{ bytes: number }> {
    const body = {
      id: this.vm,
      path,
      mode: o.mode ?? 'truncate',
      ...(o.perm !== undefined ? { perm: o.perm } : {}),
      parents: o.parents === true,
      key: o.key ?? newId('sdkwrite', 16),
    };
    const st = await this.t.stream('file.write', body, o);
    const onAbort = (): void => st.cancel();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await send(st, data, o.signal);
      for await (const c of st as AsyncIterable<StreamChunk>) {
        if (c.kind !== 'end') continue;
        o.signal?.throwIfAborted();
        if (!c.end.ok) throw endError(c.end);
        return { bytes: c.end.bytes ?? 0 };
      }
      throw new ForkyError('UNAVAILABLE', `writing ${path}: the stream ended without its end message`);
    } catch (e) {
      // The source failed, or we gave up: the guest keeps what was written and stops.
      st.cancel();
      o.signal?.throwIfAborted();
      throw e;
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      st.close();
    }
  }

  /**
   * Changes under `path` (a file or a directory; `recursive`: its subdirectories too) as they
   * happen: iterate the watch for `{kind, path}` events until close() or the signal's abort.
   */
  watch(path: string, o: WatchOptions = {}): Promise<FileWatch> {
    return watch(this.t, this.vm, path, o);
  }

  async list(path: string, o: CallOptions = {}): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    return this.t.call('file.list', { id: this.vm, path }, o);
  }

  async stat(path: string, o: CallOptions = {}): Promise<FileStat> {
    return (await this.t.call('file.stat', { id: this.vm, path }, o)).stat;
  }

  async exists(path: string, o: CallOptions = {}): Promise<boolean> {
    return this.stat(path, o).then(
      () => true,
      (e: unknown) => {
        if (e instanceof ForkyError && e.code === 'NOT_FOUND') return false;
        throw e;
      },
    );
  }

  async mkdir(path: string, o: CallOptions & { parents?: boolean; perm?: number } = {}): Promise<void> {
    await this.t.call(
      'file.mkdir',
      { id: this.vm, path, parents: o.parents === true, ...(o.perm !== undefined ? { perm: o.perm } : {}) },
      o,
    );
  }

  async remove(path: string, o: CallOptions & { recursive?: boolean } = {}): Promise<void> {
    await this.t.call('file.remove', { id: this.vm, path, recursive: o.recursive === true }, o);
  }

  async rename(from: string, to: string, o: CallOptions = {}): Promise<void> {
    await this.t.call('file.rename', { id: this.vm, from, to }, o);
  }
}

/** A source's bytes as the stream's input, then EOF; one write at a time, so the source waits while the host has no credit. */
async function send(st: StreamLike, data: string | Uint8Array | AsyncIterable<Uint8Array>, signal: AbortSignal | undefined): Promise<void> {
  const src = typeof data === 'string' || data instanceof Uint8Array ? [typeof data === 'string' ? Buffer.from(data) : data] : data;
  for await (const b of src)
    for (let i = 0; i < b.length; i += CHUNK) {
      signal?.throwIfAborted();
      await st.write(b.subarray(i, i + CHUNK));
    }
  await st.closeInput();
}
