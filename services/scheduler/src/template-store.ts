import type { KV } from '@nats-io/kv';
import { z } from 'zod';
import { NotFoundError, type Logger } from '@forky/base';
import { entryValue, isReadableKey, logBadEntry, retryTransient } from '@forky/bus';
import { HostId, RetiredTemplate, TemplateInfo, type TemplateList } from '@forky/contract';

/**
 * The templates bucket (BUCKETS.templates), which only schedulers write:
 *   <name>            TemplateInfo
 *   retired.<snapId>  RetiredTemplate: an old template's snapshot kept while VMs use it
 *   build.<key>       a create under way: the host it builds on and its generation
 * Every write that replaces something is a compare-and-set on the revision read, so two creates
 * of one name never lose the snapshot the other replaced.
 */

const RETIRED = 'retired.';
const BUILD = 'build.';

/** A create in progress. `gen` grows each time a failed attempt was rolled back, so the next one keys its hostd calls anew. */
export const Build = z.strictObject({ host: HostId, gen: z.number().int().min(0).max(1000) });
export type Build = z.infer<typeof Build>;

export interface Stored<T> {
  value: T;
  revision: number;
}

/** kv.create/update refused: someone else wrote the key first. */
export function isCasLost(e: unknown): boolean {
  const err = e as { api_error?: { err_code?: number }; message?: string };
  return err?.api_error?.err_code === 10071 || /wrong last sequence|key exists/i.test(err?.message ?? '');
}

const get = async <S extends z.ZodType>(kv: KV, schema: S, key: string, log: Logger): Promise<Stored<z.infer<S>> | undefined> => {
  const e = await retryTransient('templates get', () => kv.get(key), { log });
  const value = entryValue(schema, e, log);
  return value !== undefined && e ? { value, revision: e.revision } : undefined;
};

export async function getTemplate(kv: KV, name: string, log: Logger): Promise<Stored<TemplateInfo> | undefined> {
  const t = await get(kv, TemplateInfo, name, log);
  // A template filed under another name is no template (the bucket is the schedulers', but be sure).
  return t && t.value.name === name ? t : undefined;
}

/** The template, or NOT_FOUND naming it. */
export async function resolveTemplate(kv: KV, name: string, log: Logger): Promise<TemplateInfo> {
  const t = await getTemplate(kv, name, log);
  if (!t) throw new NotFoundError('template', name);
  return t.value;
}

/** Every template and retired snapshot, by name and age. */
export async function listTemplates(kv: KV, log: Logger): Promise<TemplateList> {
  const out: TemplateList = { templates: [], retired: [] };
  for await (const key of await kv.keys()) {
    if (!isReadableKey(key)) {
      logBadEntry(log, `templates/${key}`, 'not a key the client can read', key);
      continue;
    }
    if (key.startsWith(BUILD)) continue;
    if (key.startsWith(RETIRED)) {
      const r = (await get(kv, RetiredTemplate, key, log))?.value;
      if (r && key === RETIRED + r.snapshot) out.retired.push(r);
    } else {
      const t = await getTemplate(kv, key, log);
      if (t) out.templates.push(t.value);
    }
  }
  out.templates.sort((a, b) => a.name.localeCompare(b.name));
  out.retired.sort((a, b) => a.retiredAt.localeCompare(b.retiredAt));
  return out;
}

/** Records a snapshot as retired (kept until no VM uses it); a second record of it is a no-op. */
export async function retire(kv: KV, snapshot: string, name: string, log: Logger): Promise<void> {
  const r: RetiredTemplate = { snapshot, name, retiredAt: new Date().toISOString() };
  try {
    await retryTransient('templates retire', () => kv.create(RETIRED + snapshot, JSON.stringify(r)), { log });
  } catch (e) {
    if (!isCasLost(e)) throw e;
  }
}

export async function unretire(kv: KV, snapshot: string, log: Logger): Promise<void> {
  await retryTransient('templates unretire', () => kv.delete(RETIRED + snapshot), { log });
}

export const retiredSnapshot = (key: string): string | undefined => (key.startsWith(RETIRED) ? key.slice(RETIRED.length) : undefined);

/**
 * Files `info` under its name. The template it replaces, if any, is retired first, so that its
 * snapshot is never forgotten; a write that lost a race reads again and retires what won.
 */
export async function putTemplate(kv: KV, info: TemplateInfo, log: Logger): Promise<TemplateInfo | undefined> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const cur = await getTemplate(kv, info.name, log);
    try {
      if (cur) {
        if (cur.value.snapshot !== info.snapshot) await retire(kv, cur.value.snapshot, cur.value.name, log);
        await kv.update(info.name, JSON.stringify(info), cur.revision);
      } else {
        await kv.create(info.name, JSON.stringify(info));
      }
      return cur?.value;
    } catch (e) {
      if (!isCasLost(e)) throw e;
    }
  }
  throw new Error(`template ${info.name}: 20 writes in a row lost a race; not filed`);
}

/**
 * Removes the template `name` if it still names `snapshot`, retiring the snapshot first. Returns
 * false when it no longer does (another create replaced it meanwhile).
 */
export async function removeTemplate(kv: KV, cur: Stored<TemplateInfo>, log: Logger): Promise<boolean> {
  await retire(kv, cur.value.snapshot, cur.value.name, log);
  try {
    await kv.delete(cur.value.name, { previousSeq: cur.revision });
    return true;
  } catch (e) {
    if (isCasLost(e)) return false;
    throw e;
  }
}

/** The build record of a create under `key`, made with `pick()`'s host if there is none yet. */
export async function openBuild(kv: KV, key: string, pick: () => string, log: Logger): Promise<Build> {
  for (;;) {
    const cur = await get(kv, Build, BUILD + key, log);
    if (cur) return cur.value;
    const b: Build = { host: pick(), gen: 0 };
    try {
      await kv.create(BUILD + key, JSON.stringify(b));
      return b;
    } catch (e) {
      if (!isCasLost(e)) throw e;
    }
  }
}

export async function saveBuild(kv: KV, key: string, b: Build, log: Logger): Promise<void> {
  await retryTransient('templates build', () => kv.put(BUILD + key, JSON.stringify(b)), { log });
}

export async function dropBuild(kv: KV, key: string, log: Logger): Promise<void> {
  await retryTransient('templates build drop', () => kv.delete(BUILD + key), { log }).catch((err: unknown) =>
    log.warn({ err, key }, 'could not drop a build record'),
  );
}

/** Every retired snapshot id. */
export async function retiredIds(kv: KV): Promise<string[]> {
  const out: string[] = [];
  for await (const key of await kv.keys(`${RETIRED}>`)) {
    const id = retiredSnapshot(key);
    if (id) out.push(id);
  }
  return out;
}
