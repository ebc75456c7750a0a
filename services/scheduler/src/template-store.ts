import type { KV } from '@nats-io/kv';
import { z } from 'zod';
import { NotFoundError, type Logger } from '@forky/base';
import { entryValue, isReadableKey, logBadEntry, retryTransient } from '@forky/bus';
import {
  HostId,
  ImageName,
  NetworkPolicy,
  RetiredTemplate,
  SnapshotId,
  TEMPLATE_MAX_STEPS,
  TemplateInfo,
  TemplateName,
  VmId,
  type TemplateList,
} from '@forky/contract';

/**
 * The templates bucket (BUCKETS.templates), which only schedulers write:
 *   <name>            TemplateInfo
 *   retired.<snapId>  RetiredTemplate: an old template's snapshot kept while VMs use it
 *   build.<key>       a create under way: its host, generation, what it made so far, and the
 *                     attempts left behind that are still to be cleaned up
 *   boot.<key>        a boot from a template under way: the host it forks on
 * Every write that replaces something is a compare-and-set on the revision read, so two creates
 * of one name never lose the snapshot the other replaced.
 */

const RETIRED = 'retired.';
const BUILD = 'build.';
const BOOT = 'boot.';

/**
 * One attempt at a build: the host, its generation (its hostd calls are keyed by it), what it made
 * (the builder VM, the snapshot), how many run steps finished, and the keyed calls whose outcome is
 * not known yet (sent, no reply): a repeat of those under their key returns what they made.
 */
export const Attempt = z.strictObject({
  host: HostId,
  gen: z.number().int().min(0).max(1000),
  /** Made with the record: keys its calls apart from those of an earlier record under the same key. */
  nonce: z
    .string()
    .regex(/^[0-9a-f]{1,32}$/)
    .optional(),
  vm: VmId.optional(),
  snapshot: SnapshotId.optional(),
  steps: z.number().int().min(0).max(TEMPLATE_MAX_STEPS).optional(),
  pending: z
    .array(z.enum(['boot', 'snapshot']))
    .max(2)
    .optional(),
});
export type Attempt = z.infer<typeof Attempt>;

/** The builder's vm.boot body, kept so that anyone (the reaper too) can repeat a boot whose outcome is unknown. */
export const BootSpec = z.strictObject({
  image: ImageName,
  memMiB: z.number().int(),
  cpus: z.number().int(),
  diskGiB: z.number().int().optional(),
  network: NetworkPolicy.optional(),
});
export type BootSpec = z.infer<typeof BootSpec>;

/**
 * A create in progress: the current attempt, the boot body, older attempts not cleaned up yet
 * (their host was down), and `over` once the job ended (the reaper then sweeps what is left).
 */
export const Build = Attempt.extend({
  name: TemplateName,
  boot: BootSpec,
  left: z.array(Attempt).max(64).optional(),
  over: z.boolean().optional(),
}).strict();
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
    if (key.startsWith(BUILD) || key.startsWith(BOOT)) continue;
    if (key.startsWith(RETIRED)) {
      const r = (await get(kv, RetiredTemplate, key, log))?.value;
      // One whose home copy is gone is only kept to delete fetched copies: no VM runs on it.
      if (r && key === RETIRED + r.snapshot && !r.homeDeletedAt) out.retired.push(r);
    } else {
      const t = await getTemplate(kv, key, log);
      if (t) out.templates.push(t.value);
    }
  }
  // A snapshot retired by a write that then failed is still a template's: not shown as retired (reapOne skips it).
  out.retired = out.retired.filter((r) => !out.templates.some((t) => t.snapshot === r.snapshot));
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

/** The retired record of `snapshot`, with its revision. */
export function getRetired(kv: KV, snapshot: string, log: Logger): Promise<Stored<RetiredTemplate> | undefined> {
  return get(kv, RetiredTemplate, RETIRED + snapshot, log);
}

/** Notes that the home copy of a retired snapshot is gone (copies elsewhere may remain). */
export async function markHomeDeleted(kv: KV, cur: Stored<RetiredTemplate>, log: Logger): Promise<RetiredTemplate> {
  const r: RetiredTemplate = { ...cur.value, homeDeletedAt: new Date().toISOString() };
  await retryTransient('templates retired', () => kv.put(RETIRED + r.snapshot, JSON.stringify(r)), { log });
  return r;
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

/**
 * The build record of a create under `key`, made with `fresh()` if there is none yet. A record that
 * does not parse (written by hand, or by another version) is deleted and made anew: what it named
 * cannot be known, and spinning on it would hold the job forever.
 */
export async function openBuild(kv: KV, key: string, fresh: () => Build, log: Logger): Promise<Build> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await retryTransient('templates get', () => kv.get(BUILD + key), { log });
    if (e && e.operation === 'PUT') {
      const value = entryValue(Build, e, log);
      if (value !== undefined) return value;
      await kv.delete(BUILD + key, { previousSeq: e.revision }).catch((err: unknown) => {
        if (!isCasLost(err)) throw err;
      });
      continue;
    }
    const b = fresh();
    try {
      await kv.create(BUILD + key, JSON.stringify(b));
      return b;
    } catch (err) {
      if (!isCasLost(err)) throw err;
    }
  }
  throw new Error(`template build ${key}: 20 opens of its record in a row lost a race`);
}

/** Every build record's (or, with `boot`, boot record's) key: the job's idempotency key. */
export async function buildKeys(kv: KV, kind: 'build' | 'boot' = 'build'): Promise<string[]> {
  const prefix = kind === 'build' ? BUILD : BOOT;
  const out: string[] = [];
  for await (const k of await kv.keys(`${prefix}>`)) out.push(k.slice(prefix.length));
  return out;
}

export async function readBuild(kv: KV, key: string, log: Logger): Promise<Build | undefined> {
  return (await get(kv, Build, BUILD + key, log))?.value;
}

const BootHost = z.strictObject({ host: HostId });

/** The host a template boot under `key` picked on its first delivery, or the one `pick()` gives now. */
export async function bootHost(kv: KV, key: string, pick: (was?: string) => string, log: Logger): Promise<string> {
  const cur = (await get(kv, BootHost, BOOT + key, log))?.value.host;
  const host = pick(cur);
  if (host !== cur) await retryTransient('templates boot', () => kv.put(BOOT + key, JSON.stringify({ host })), { log });
  return host;
}

export async function dropBootHost(kv: KV, key: string, log: Logger): Promise<void> {
  await retryTransient('templates boot drop', () => kv.delete(BOOT + key), { log }).catch((err: unknown) =>
    log.warn({ err, key }, 'could not drop a boot record'),
  );
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
