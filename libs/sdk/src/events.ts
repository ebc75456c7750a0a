import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import { ValidationError } from '@forky/base';
import { EVENT_KINDS, HostId, Labels, SUBJECT_ROOT, VmEvent, VmId, labelsMatch, type EventKind } from '@forky/contract';

export interface EventsOptions {
  /** Only these kinds (filtered by the server: one subscription per kind). */
  kinds?: readonly EventKind[];
  /** Only events of this VM (`vm` field; filtered here). */
  vm?: string;
  /** Only events of this host (filtered by the server). */
  host?: string;
  /** Only events whose labels include every one of these (a snapshot's: its VM's; filtered here). */
  labels?: Labels;
  /** Closes the stream: the loop over it ends. */
  signal?: AbortSignal;
  /** Events held for a reader that is behind (default 1024, at most 65536); past it, new ones are dropped and counted. */
  maxPending?: number;
}

const DEFAULT_PENDING = 1024;
const MAX_PENDING = 65_536;

/**
 * Events of the cluster's VMs and snapshots as they happen (STREAMS.md "Events"), as an async
 * iterable: `for await (const e of forky.events())`. Core NATS: nothing before the subscription
 * is seen, and a reader slower than the events loses the newest past `maxPending` (`dropped`
 * counts them). A body that is not a valid event is skipped and counted (`malformed`), never
 * thrown at the reader. The subscription ends when the loop exits, `close()` or the signal.
 */
export class EventStream implements AsyncIterable<VmEvent> {
  #dropped = 0;
  #malformed = 0;
  readonly #queue: VmEvent[] = [];
  readonly #subs: Subscription[];
  readonly #max: number;
  readonly #vm: string | undefined;
  readonly #labels: Labels | undefined;
  #wake: (() => void) | undefined;
  #closed = false;
  #onAbort: (() => void) | undefined;

  /** @internal */
  constructor(
    private readonly nc: NatsConnection,
    private readonly o: EventsOptions = {},
  ) {
    const { kinds, host, vm, labels } = checkOptions(o);
    this.#max = o.maxPending ?? DEFAULT_PENDING;
    this.#vm = vm;
    this.#labels = labels;
    const filters = kinds ? [...new Set(kinds)] : ['*'];
    this.#subs = filters.map((k) =>
      nc.subscribe(`${SUBJECT_ROOT}.events.${host ?? '*'}.${k}`, { callback: (err, m) => this.#take(err, m) }),
    );
    // A closed connection sends nothing more: the loop ends rather than wait forever.
    void nc.closed().then(() => this.close());
    if (o.signal) {
      this.#onAbort = () => this.close();
      if (o.signal.aborted) this.close();
      else o.signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /** Events lost because the reader was behind by `maxPending`. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Messages skipped because they were not valid events. */
  get malformed(): number {
    return this.#malformed;
  }

  /** Resolves once the server has the subscription: every event published after this is delivered (unless dropped). */
  async ready(): Promise<void> {
    await this.nc.flush();
  }

  /** Ends the subscription at once (events still held are let go); a loop over the stream ends. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue.length = 0;
    for (const s of this.#subs) s.unsubscribe();
    if (this.#onAbort) this.o.signal?.removeEventListener('abort', this.#onAbort);
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<VmEvent> {
    try {
      while (!this.#closed) {
        const e = this.#queue.shift();
        if (e) yield e;
        else {
          await new Promise<void>((resolve) => (this.#wake = resolve));
          this.#wake = undefined;
        }
      }
    } finally {
      this.close();
    }
  }

  #take(err: Error | null, m: Msg): void {
    if (err || this.#closed) return;
    let e: VmEvent;
    try {
      const parsed = VmEvent.safeParse(JSON.parse(m.string()));
      if (!parsed.success) throw parsed.error;
      e = parsed.data;
    } catch {
      this.#malformed++;
      return;
    }
    if (this.#vm !== undefined && e.vm !== this.#vm) return;
    if (!labelsMatch(e.labels, this.#labels)) return;
    if (this.#queue.length >= this.#max) {
      this.#dropped++;
      return;
    }
    this.#queue.push(e);
    this.#wake?.();
  }
}

function checkOptions(o: EventsOptions): { kinds?: readonly EventKind[]; host?: string; vm?: string; labels?: Labels } {
  for (const k of o.kinds ?? [])
    if (!(EVENT_KINDS as readonly string[]).includes(k))
      throw new ValidationError(`kinds: ${JSON.stringify(String(k)).slice(0, 40)} is not one of ${EVENT_KINDS.join(', ')}`, {
        field: 'kinds',
      });
  if (o.kinds && o.kinds.length === 0) throw new ValidationError('kinds: give at least one kind, or none for all', { field: 'kinds' });
  if (o.host !== undefined && !HostId.safeParse(o.host).success)
    throw new ValidationError('host: lowercase letters, digits and dashes, at most 63', { field: 'host' });
  if (o.vm !== undefined && !VmId.safeParse(o.vm).success) throw new ValidationError('vm: must look like vm-xxxxxxxxxxxx', { field: 'vm' });
  const max = o.maxPending;
  if (max !== undefined && (!Number.isInteger(max) || max < 1 || max > MAX_PENDING))
    throw new ValidationError(`maxPending: a whole number from 1 to ${MAX_PENDING}`, { field: 'maxPending' });
  const labels = o.labels === undefined ? undefined : Labels.safeParse(o.labels);
  if (labels && !labels.success)
    throw new ValidationError(`labels: ${labels.error.issues[0]?.message ?? 'not labels'}`, { field: 'labels' });
  return {
    ...(o.kinds ? { kinds: o.kinds } : {}),
    ...(o.host ? { host: o.host } : {}),
    ...(o.vm ? { vm: o.vm } : {}),
    ...(labels?.data ? { labels: labels.data } : {}),
  };
}
