import type { NatsConnection } from '@nats-io/nats-core';
import { Base64UrlPaddedCodec, type ObjectInfo, type ObjectStore } from '@nats-io/obj';
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { DeadlineError, ForkyError, type ErrorCode } from '@forky/base';
import { PARTS_BUCKET } from './parts-io.js';

/**
 * A publish under way leaves a marker, `publishing.<id>`, from its start until its manifest is
 * in: a fetch that finds no manifest but the marker waits for the publish (with a deadline)
 * instead of failing. A failed publish turns the marker to `failed`, then removes it.
 */
export const markerName = (id: string): string => `publishing.${id}`;
const manifestName = (id: string): string => `manifest.${id}`;
/** A marker older than this is a publish whose host went away (a publish has this deadline itself). */
export const MARKER_STALE_MS = 10 * 60_000;

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

export async function markPublishing(os: ObjectStore, id: string, host: string): Promise<void> {
  await putMarker(os, id, { state: 'running', host, at: Date.now() });
}

/** Ends the marker: on failure it says so first (its deletion keeps that, for the fetches waiting), then it goes. */
export async function endPublishing(os: ObjectStore, id: string, host: string, failure?: { code: string; message: string }): Promise<void> {
  if (failure)
    await putMarker(os, id, { state: 'failed', host, at: Date.now(), code: failure.code, message: failure.message.slice(0, 512) });
  await os.delete(markerName(id));
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
 * that publish puts it. NOT_FOUND without either; PublishFailedError if the publish fails;
 * DeadlineError after `timeoutMs` (or once the marker is stale).
 */
export async function waitManifest(
  nc: NatsConnection,
  os: ObjectStore,
  id: string,
  timeoutMs: number,
  read: () => Promise<unknown>,
): Promise<unknown> {
  const notFound = (): ForkyError => new ForkyError('NOT_FOUND', `snapshot ${id} has not been published`);
  const first = await os.info(manifestName(id));
  if (first && !first.deleted) return read();
  const marker = async (): Promise<ReturnType<typeof parseMarker>> => parseMarker(await os.info(markerName(id)).catch(() => null));
  const m0 = await marker();
  if (!m0 || m0.gone || m0.state !== 'running') throw notFound();
  // Watch first, then look: a change between the look and the wait is not missed.
  const w = await watchMeta(nc, [manifestName(id), markerName(id)]);
  const t0 = Date.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    for (;;) {
      const info = await os.info(manifestName(id));
      if (info && !info.deleted) return await read();
      const m = await marker();
      if (m?.state === 'failed')
        throw new PublishFailedError(id, m.host, m.message ?? 'no reason given', (m.code as ErrorCode) ?? 'UNAVAILABLE');
      if (!m || m.gone) throw new PublishFailedError(id, m0.host, 'it ended without a manifest');
      const left = Math.min(t0 + timeoutMs, m.at + MARKER_STALE_MS) - Date.now();
      if (left <= 0) throw new DeadlineError(`waiting for the publish of snapshot ${id} on host ${m.host}`, timeoutMs);
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new DeadlineError(`waiting for the publish of snapshot ${id} on host ${m.host}`, timeoutMs)), left);
        w.changed().then(resolve, reject);
      });
      clearTimeout(timer);
    }
  } finally {
    clearTimeout(timer);
    w.close();
  }
}
