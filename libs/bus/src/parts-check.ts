import type { NatsConnection } from '@nats-io/nats-core';
import type { ObjectInfo, ObjectStore } from '@nats-io/obj';
import { MAX_DEPTH } from './chunk-map.js';
import { KIND } from './parts-io.js';
import { refsOf } from './parts-sweep.js';

export const partName = (digest: string): string => `sha256-${digest}`;
export const packName = (digest: string): string => `pack-${digest}`;

export async function liveInfo(os: ObjectStore, object: string): Promise<ObjectInfo | undefined> {
  const info = await os.info(object);
  return info && !info.deleted ? info : undefined;
}

/** Whether a part is in the store and whole: its packs and its delta base (in turn) are there too. */
export interface PartState {
  present: boolean;
  intact: boolean;
  chunked: boolean;
  /** The meta subject's revision of the object as it is (0: none ever), for a conditional put. */
  revision: number;
}

export async function partState(os: ObjectStore, nc: NatsConnection, digest: string, signal: AbortSignal, hops = 0): Promise<PartState> {
  const raw = await os.info(partName(digest));
  const revision = raw?.revision ?? 0;
  if (!raw || raw.deleted) return { present: false, intact: false, chunked: false, revision };
  if (raw.metadata?.forky !== KIND) return { present: true, intact: true, chunked: false, revision };
  const refs = await refsOf(nc, raw, signal).catch(() => undefined);
  let intact = !!refs && hops <= MAX_DEPTH;
  for (const p of refs?.packs ?? []) if (intact) intact = !!(await liveInfo(os, packName(p)));
  if (intact && refs?.base) intact = (await partState(os, nc, refs.base, signal, hops + 1)).intact;
  return { present: true, intact, chunked: true, revision };
}
