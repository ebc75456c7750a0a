import { ForkyError, ValidationError } from '@forky/base';
import type { StreamChunk, StreamEnd } from '@forky/bus';
import { FileWatchRequest } from '@forky/contract';
import { HandOvers } from './hand-over.js';
import { endError } from './process.js';
import type { CallOptions, Calls, StreamLike } from './transport.js';

/**
 * One change the guest saw. Both values are the guest's, unchecked beyond being strings (escape
 * before showing): `kind` is `create`, `modify`, `delete` or `move` from a well-behaved agent, and
 * `path` an absolute path. They are bounded as the stream is (its chunks, at most 64 KiB each).
 */
export interface WatchEvent {
  kind: string;
  path: string;
}

/** Why events may be missing: the guest said it dropped some, or the VM was handed over (a snapshot) and watched again. */
export type DropReason = 'guest' | 'hand-over';

export interface WatchOptions extends CallOptions {
  /** Watch the directories under it too. */
  recursive?: boolean;
  /** Called when events were lost between two that were yielded (the iteration goes on). */
  onDropped?: (reason: DropReason) => void;
}

/**
 * Changes under a path in a VM (`vm.files.watch`), as an async iterable of events, until close()
 * or the signal's abort, which end the iteration (no error). A snapshot of the VM (a live fork)
 * ends the guest's watch: it is opened again on the new QEMU process, and `onDropped('hand-over')`
 * says changes in between were not seen.
 */
export class FileWatch implements AsyncIterable<WatchEvent> {
  readonly #t: Calls;
  readonly #body: Record<string, unknown>;
  readonly #onDropped: ((reason: DropReason) => void) | undefined;
  readonly #signal: AbortSignal | undefined;
  /** Aborted by close() (or the caller's signal): stops a reopen under way. */
  readonly #stop = new AbortController();
  #stream: StreamLike;
  #closed = false;
  #reading = false;

  /** @internal */
  constructor(t: Calls, body: Record<string, unknown>, stream: StreamLike, o: WatchOptions) {
    this.#t = t;
    this.#body = body;
    this.#stream = stream;
    this.#onDropped = o.onDropped;
    this.#signal = o.signal;
    if (o.signal?.aborted) this.close();
    else o.signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Stops the watch in the guest; the iteration ends once the guest says it stopped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#stop.abort();
    this.#stream.cancel();
    // Nobody reads it to its end: stop listening now.
    if (!this.#reading) this.#stream.close();
  }

  readonly #onAbort = (): void => this.close();

  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    if (this.#reading) throw new ForkyError('INVALID_STATE', 'a watch is read by one reader');
    this.#reading = true;
    const handOvers = new HandOvers();
    let ended = false;
    try {
      for (;;) {
        let end: StreamEnd | undefined;
        for await (const c of this.#stream as AsyncIterable<StreamChunk>) {
          if (c.kind === 'end') {
            end = c.end;
            break;
          }
          if (c.kind !== 'event') continue;
          if (c.event.type === 'dropped') this.#onDropped?.('guest');
          if (c.event.type !== 'events' || !Array.isArray(c.event.events)) continue;
          for (const e of c.event.events as unknown[]) {
            const ev = e as Partial<Record<'kind' | 'path', unknown>> | null;
            // A hostile guest's item that is no event is not passed on as one.
            if (typeof ev?.kind === 'string' && typeof ev.path === 'string') yield { kind: ev.kind, path: ev.path };
          }
        }
        ended = end !== undefined;
        if (this.#closed) return;
        if (!end) throw new ForkyError('UNAVAILABLE', 'the watch stream ended without its end message');
        if (end.ok) return;
        if (end.code !== 'GONE') throw endError(end);
        // Handed over: watched again on the new process (HandOvers bounds how often, and how long).
        this.#stream.close();
        const signal = this.#stop.signal;
        let st: StreamLike;
        try {
          st = await handOvers.reopen(() => this.#t.stream('file.watch', this.#body, { signal }), 'the watch', signal);
        } catch (e) {
          if (this.#closed) return;
          throw e;
        }
        this.#stream = st;
        ended = false;
        if (this.#closed) st.cancel();
        else this.#onDropped?.('hand-over');
      }
    } finally {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.#closed = true;
      // Left before its end (a break, a throw): the guest stops watching now.
      if (!ended) this.#stream.cancel();
      this.#stream.close();
    }
  }
}

/** Opens a watch of `path` in VM `vm` (bad input is refused, naming the field, before anything is sent). */
export async function watch(t: Calls, vm: string, path: string, o: WatchOptions = {}): Promise<FileWatch> {
  const checked = FileWatchRequest.shape.path.safeParse(path);
  if (!checked.success) throw new ValidationError(`path: ${checked.error.issues[0]?.message ?? 'not a guest path'}`, { field: 'path' });
  if (o.recursive !== undefined && typeof o.recursive !== 'boolean')
    throw new ValidationError('recursive: true or false', { field: 'recursive' });
  const body = { id: vm, path, recursive: o.recursive === true };
  const st = await t.stream('file.watch', body, {
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}),
  });
  return new FileWatch(t, body, st, o);
}
