import type { NatsConnection } from '@nats-io/nats-core';
import { Base64UrlPaddedCodec, type ObjectInfo, type ObjectStore } from '@nats-io/obj';
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { DeadlineError, ForkyError, type ErrorCode } from '@forky/base';
import { PARTS_BUCKET } from './parts-io.js';
import { callerDeadline } from './deadlines.js';

/**
 * A publish under way leaves a marker, `publishing.<id>`, from its start until its manifest is
 * in: a fetch that finds no manifest but the marker waits for the publish (with a deadline)
 * instead of failing. A failed publish turns the marker to `failed`, then removes it.
 */
export const markerName = (id: string): string => `publishing.${id}`;
const manifestName = (id: string): string => `manifest.${id}`;
/** How often a publish under way puts its marker again: a fetch takes a marker not renewed for long for none. */
export const MARKER_REFRESH_MS = 30_000;
/**
 * A marker with no renewal seen for this long (by the reader's own clock; the writer's `at` counts
 * no later than the reader's now) is a publish whose host went away: no publish is under way.
 */
export const MARKER_STALE_MS = 90_000;

interface Marker {
  state: 'running' | 'failed';
  host: string;
  at: number;
  code?: string;
  message?: string;
}

/** The publish a fetch waited for failed on its host; every fetch that waited sees it. */
export class PublishFailedError extends ForkyError {
  override readonly name = 'PublishFailedError';
  constructor(id: string, host: string, why: string, code: ErrorCode = 'UNAVAILABLE') {
    super(code, `snapshot ${id}: its publish on host ${host} failed: ${why}`, { details: { id, host } });
  }
}

const CODES = new Set<string>(['UNAVAILABLE', 'CAPACITY', 'TIMEOUT', 'INTERNAL', 'NOT_FOUND', 'CONFLICT', 'INCOMPATIBLE']);

/**
 * The marker lives in the object's metadata, which its deletion keeps: a fetch that looks after
 * a failed publish removed it still reads why. Any host writes the store: each field is checked.
 */
function parseMarker(info: ObjectInfo | null): (Marker & { gone: boolean }) | undefined {
  const m = info?.metadata;
  if (!m || (m.state !== 'running' && m.state !== 'failed')) return undefined;
  const at = Number(m.at);
  if (typeof m.host !== 'string' || m.host.length > 64 || !Number.isFinite(at)) return undefined;
  return {
    state: m.state,
    host: m.host,
    at,
    gone: !!info.deleted,
    ...(typeof m.code === 'string' && CODES.has(m.code) ? { code: m.code } : {}),
    ...(typeof m.message === 'string' ? { message: m.message.slice(0, 512) } : {}),
  };
}

const putMarker = (os: ObjectStore, id: string, m: Marker): Promise<unknown> =>
  os.putBlob(
    {
      name: markerName(id),
      metadata: {
        state: m.state,
        host: m.host,
        at: String(m.at),
        ...(m.code ? { code: m.code } : {}),
        ...(m.message ? { message: m.message } : {}),
      },
    },
    new Uint8Array(0),
  );

/**
 * This host's publish markers: each is put again every `refreshMs` until ended. A renewal in
 * flight is waited for before the end, so that it does not bring back a marker already gone.
 */
export class PublishMarkers {
  readonly #timers = new Map<string, { timer: NodeJS.Timeout; last: Promise<unknown> }>();

  constructor(
    private readonly os: ObjectStore,
    private readonly refreshMs = MARKER_REFRESH_MS,
  ) {}

  async mark(id: string, host: string): Promise<void> {
    await this.#stop(id);
    await putMarker(this.os, id, { state: 'running', host, at: Date.now() });
    const r = {
      last: Promise.resolve() as Promise<unknown>,
      timer: setInterval(() => {
        r.last = putMarker(this.os, id, { state: 'running', host, at: Date.now() }).catch(() => undefined);
      }, this.refreshMs),
    };
    r.timer.unref();
    this.#timers.set(id, r);
  }

  /** Ends the marker: on failure it says so first (its deletion keeps that, for the fetches waiting), then it goes. */
  async end(id: string, host: string, failure?: { code: string; message: string }): Promise<void> {
    await this.#stop(id);
    if (failure)
      await putMarker(this.os, id, { state: 'failed', host, at: Date.now(), code: failure.code, message: failure.message.slice(0, 512) });
    await this.os.delete(markerName(id));
  }

  /** Removes the markers `host` left (its publishes died with its last run): fetches need not wait for them. */
  async clear(host: string): Promise<number> {
    let n = 0;
    for (const info of await this.os.list()) {
      if (!info.name.startsWith('publishing.') || this.#timers.has(info.name.slice('publishing.'.length))) continue;
      const m = parseMarker(info);
      if (m?.host !== host || m.state !== 'running') continue;
      await this.os.delete(info.name);
      n++;
    }
    return n;
  }

  async #stop(id: string): Promise<void> {
    const r = this.#timers.get(id);
    if (!r) return;
    this.#timers.delete(id);
    clearInterval(r.timer);
    await r.last;
  }
}

/** Wakes on each change to the named objects' meta entries (puts and deletes), until closed. */
async function watchMeta(nc: NatsConnection, names: string[]): Promise<{ changed: () => Promise<void>; close: () => void }> {
  const js = jetstream(nc);
  let wake: (() => void) | undefined;
  let pending = false;
  const iters: Array<{ close(): Promise<void | Error> }> = [];
  const close = (): void => {
    for (const it of iters) void it.close();
  };
  for (const n of names) {
    const it = await js.consumers
      .get(`OBJ_${PARTS_BUCKET}`, {
        filter_subjects: `$O.${PARTS_BUCKET}.M.${Base64UrlPaddedCodec.encode(n)}`,
        deliver_policy: DeliverPolicy.New,
        headers_only: true,
      })
      .then((c) => c.consume({ max_messages: 8 }))
      .catch((e: unknown) => {
        // The watches made so far go with the failure.
        close();
        throw e;
      });
    iters.push(it);
    void (async () => {
      for await (const _m of it) {
        pending = true;
        const w = wake;
        wake = undefined;
        w?.();
      }
    })().catch(() => undefined);
  }
  return {
    changed: () =>
      pending
        ? Promise.resolve().then(() => {
            pending = false;
          })
        : new Promise<void>((r) => {
            wake = () => {
              pending = false;
              r();
            };
          }),
    close,
  };
}

/**
 * The manifest of snapshot `id`: at once if it is there; if a publish of it is under way, once
 * that publish puts it. NOT_FOUND without either (a marker not renewed for `staleMs` counts as
 * none); PublishFailedError if the publish fails; DeadlineError after `timeoutMs`, or once the
 * caller of the request being served gives up.
 */
export async function waitManifest(
  nc: NatsConnection,
  os: ObjectStore,
  id: string,
  timeoutMs: number,
  read: () => Promise<unknown>,
  staleMs = MARKER_STALE_MS,
): Promise<unknown> {
  const notFound = (why = ''): ForkyError => new ForkyError('NOT_FOUND', `snapshot ${id} has not been published${why}`);
  const published = async (): Promise<boolean> => {
    const info = await os.info(manifestName(id));
    return !!info && !info.deleted;
  };
  if (await published()) return read();
  const marker = async (): Promise<(ReturnType<typeof parseMarker> & { revision: number }) | undefined> => {
    const info = await os.info(markerName(id)).catch(() => null);
    const m = parseMarker(info);
    return m && { ...m, revision: info?.revision ?? 0 };
  };
  // The publish may have put its manifest and removed its marker between the two looks.
  const m0 = await marker();
  if (!m0 || m0.gone || m0.state !== 'running') {
    if (await published()) return read();
    throw notFound();
  }
  // Fresh by the reader's clock: a writer's `at` ahead of it counts as now, not later.
  let seen = m0.revision;
  let freshUntil = Math.min(m0.at, Date.now()) + staleMs;
  const stale = (host: string): ForkyError =>
    notFound(`: the marker of its publish on host ${host} was not renewed for ${staleMs} ms (that host went away)`);
  if (freshUntil <= Date.now()) throw stale(m0.host);
  // Watch first, then look: a change between the look and the wait is not missed.
  const w = await watchMeta(nc, [manifestName(id), markerName(id)]);
  const t0 = Date.now();
  // Served for a caller, the wait ends when that caller gives up (it would get no answer after).
  timeoutMs = Math.max(0, Math.min(timeoutMs, (callerDeadline() ?? Infinity) - t0));
  const late = (host: string): DeadlineError => new DeadlineError(`waiting for the publish of snapshot ${id} on host ${host}`, timeoutMs);
  let timer: NodeJS.Timeout | undefined;
  try {
    for (;;) {
      if (await published()) return await read();
      const m = await marker();
      if (m?.state === 'failed')
        throw new PublishFailedError(id, m.host, m.message ?? 'no reason given', (m.code as ErrorCode) ?? 'UNAVAILABLE');
      if (!m || m.gone) {
        if (await published()) return await read();
        throw new PublishFailedError(id, m0.host, 'it ended without a manifest');
      }
      if (m.revision !== seen) {
        seen = m.revision;
        freshUntil = Date.now() + staleMs;
      }
      const now = Date.now();
      if (now >= freshUntil) throw stale(m.host);
      if (now >= t0 + timeoutMs) throw late(m.host);
      // Woken by a change, or at the deadline or staleness, whichever comes first: the loop says which.
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(resolve, Math.min(t0 + timeoutMs, freshUntil) - now);
        w.changed().then(resolve, reject);
      });
      clearTimeout(timer);
    }
  } finally {
    clearTimeout(timer);
    w.close();
  }
}
