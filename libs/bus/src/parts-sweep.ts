import type { NatsConnection } from '@nats-io/nats-core';
import type { ObjectInfo, ObjectStore } from '@nats-io/obj';
import { decodeMap } from './chunk-map.js';
import { KIND, readMap } from './parts-io.js';

type Manifest = { chain?: unknown; state?: unknown; ram?: unknown; image?: { kernel?: unknown; initrd?: unknown }; apps?: unknown };

/** The part objects a manifest names (by digest); one of the wrong shape names none, and stops no sweep. */
export function named(m: Manifest | undefined): string[] {
  if (!m || typeof m !== 'object') return [];
  const out: string[] = [];
  const image = m.image && typeof m.image === 'object' ? [m.image.kernel, m.image.initrd] : [];
  for (const p of [...(Array.isArray(m.chain) ? m.chain : []), m.state, m.ram, ...image]) {
    const digest = (p as { digest?: unknown } | null | undefined)?.digest;
    if (typeof digest === 'string') out.push(digest);
  }
  // App layers are parts under their own digest.
  for (const a of Array.isArray(m.apps) ? m.apps : []) {
    const layer = (a as { layer?: unknown } | null | undefined)?.layer;
    if (typeof layer === 'string') out.push(layer);
  }
  return out;
}

/**
 * Deletes part objects no manifest refers to (directly or as a delta's base), then packs no kept
 * part refers to; anything younger than `graceMs` stays (a publish puts packs, then parts, then
 * its manifest).
 */
export async function sweepParts(
  os: ObjectStore,
  graceMs: number,
  refsOf: (info: ObjectInfo) => Promise<{ packs: string[]; base?: string }>,
): Promise<{ deleted: number; kept: number }> {
  const all = (await os.list()).filter((o) => !o.deleted);
  const parts = new Map(all.filter((x) => x.name.startsWith('sha256-')).map((o) => [o.name, o]));
  const kept = new Set<string>();
  const packs = new Set<string>();
  // Keeps `names` and, in turn, the packs and the base of every kept part.
  const keep = async (names: Iterable<string>): Promise<void> => {
    const queue = [...names].filter((n) => !kept.has(n));
    for (const n of queue) kept.add(n);
    while (queue.length) {
      const o = parts.get(queue.pop() as string);
      if (!o) continue;
      const refs = await refsOf(o);
      for (const p of refs.packs) packs.add(`pack-${p}`);
      const base = refs.base && `sha256-${refs.base}`;
      if (base && !kept.has(base)) {
        kept.add(base);
        queue.push(base);
      }
    }
  };
  const cutoff = Date.now() - graceMs;
  const young = (o: ObjectInfo): boolean => Date.parse(o.mtime) > cutoff;
  const manifests = all.filter((x) => x.name.startsWith('manifest.'));
  await keep([...(await namedBy(os, manifests)), ...[...parts.values()].filter(young).map((o) => o.name)]);
  const doomed = [...parts.values(), ...all.filter((x) => x.name.startsWith('pack-'))].filter(
    (o) => !kept.has(o.name) && !packs.has(o.name) && !young(o),
  );
  if (!doomed.length) return { deleted: 0, kept: kept.size + packs.size };
  // A publish may have put maps and manifests since the first listing (naming what it doomed): list
  // again and keep what appeared, with everything it names.
  const seen = new Set(all.map((o) => `${o.name}\0${o.nuid}`));
  const fresh = (await os.list()).filter((o) => !o.deleted && !seen.has(`${o.name}\0${o.nuid}`));
  for (const o of fresh) if (o.name.startsWith('sha256-')) parts.set(o.name, o);
  const newParts = fresh.filter((o) => o.name.startsWith('sha256-')).map((o) => o.name);
  for (const n of newParts) kept.delete(n);
  await keep([
    ...(await namedBy(
      os,
      fresh.filter((x) => x.name.startsWith('manifest.')),
    )),
    ...newParts,
  ]);
  let deleted = 0;
  for (const o of doomed) {
    if (kept.has(o.name) || packs.has(o.name)) continue;
    await os.delete(o.name);
    deleted++;
  }
  return { deleted, kept: kept.size + packs.size };
}

/** The part object names the manifests name. */
async function namedBy(os: ObjectStore, manifests: ObjectInfo[]): Promise<string[]> {
  const out: string[] = [];
  for (const o of manifests) {
    const b = await os.getBlob(o.name).catch(() => null);
    let m: Manifest | undefined;
    try {
      m = b ? (JSON.parse(new TextDecoder().decode(b)) as Manifest) : undefined;
    } catch {
      m = undefined;
    }
    for (const d of named(m)) out.push(`sha256-${d}`);
  }
  return out;
}

/** The packs a part's object names, and the base part of a delta (none for a sparse-encoded part). */
export async function refsOf(nc: NatsConnection, info: ObjectInfo, signal: AbortSignal): Promise<{ packs: string[]; base?: string }> {
  if (info.metadata?.forky !== KIND) return { packs: [] };
  const { packs, base } = info.metadata;
  if (packs !== undefined) return { packs: packs ? packs.split(',') : [], ...(base ? { base } : {}) };
  const digest = info.name.slice('sha256-'.length);
  // A map that cannot be read stops the sweep (what it names may be live); one that does not decode names nothing.
  const bytes = await readMap(nc, info, digest, signal);
  try {
    const m = decodeMap(bytes, digest);
    return { packs: m.packs, ...(m.base ? { base: m.base.digest } : {}) };
  } catch {
    return { packs: [] };
  }
}
