import { NotFoundError, asForkyError } from '@forky/base';
import type { TemplateDeleteResult, TemplateInfo, TemplateList } from '@forky/contract';
import type { SchedContext } from './context.js';
import { deleteSnapshot } from './lineage.js';
import { getTemplate, listTemplates, removeTemplate, resolveTemplate, retiredIds, unretire } from './template-store.js';

/** Every template, and the old snapshots kept while VMs use them. */
export function templateList(ctx: SchedContext): Promise<TemplateList> {
  return listTemplates(ctx.buckets.templates, ctx.log);
}

export function templateShow(ctx: SchedContext, name: string): Promise<TemplateInfo> {
  return resolveTemplate(ctx.buckets.templates, name, ctx.log);
}

/**
 * Removes a template: its name at once; its snapshot too unless VMs still run on it, in which
 * case the snapshot stays retired and the reaper deletes it once they are gone.
 */
export async function templateDelete(ctx: SchedContext, name: string): Promise<TemplateDeleteResult> {
  const kv = ctx.buckets.templates;
  for (let attempt = 0; attempt < 20; attempt++) {
    const cur = await getTemplate(kv, name, ctx.log);
    if (!cur) throw new NotFoundError('template', name);
    // Lost to a create of the same name: remove what it filed instead.
    if (!(await removeTemplate(kv, cur, ctx.log))) continue;
    return { name, snapshot: cur.value.snapshot, deleted: await reapOne(ctx, cur.value.snapshot) };
  }
  throw new Error(`template ${name}: 20 removals in a row lost a race`);
}

/**
 * Deletes one retired snapshot if nothing uses it any more; true once it is gone. Safe to run on
 * several schedulers at once: a delete that lost the race finds the snapshot gone.
 */
export async function reapOne(ctx: SchedContext, id: string): Promise<boolean> {
  const kv = ctx.buckets.templates;
  let home: string;
  try {
    home = await ctx.locate('snap', id);
  } catch (e) {
    if (asForkyError(e).code !== 'NOT_FOUND') throw e;
    await unretire(kv, id, ctx.log);
    return true;
  }
  // A host that is down cannot answer: the next round tries again (a call would wait out its deadline).
  if (!ctx.hosts.statuses().some((h) => h.id === home && h.alive)) return false;
  try {
    await deleteSnapshot(ctx, id, false);
  } catch (e) {
    const fe = asForkyError(e);
    if (fe.code !== 'NOT_FOUND') {
      // CONFLICT: VMs (or snapshots) still depend on it, which is what retiring is for.
      if (fe.code !== 'CONFLICT') ctx.log.warn({ err: fe, snapshot: id }, 'deleting a retired template snapshot failed');
      return false;
    }
  }
  await unretire(kv, id, ctx.log);
  return true;
}

/** One round of the reaper: every retired snapshot that nothing uses is deleted. */
export async function reapRetired(ctx: SchedContext): Promise<{ deleted: string[]; kept: string[] }> {
  const out = { deleted: [] as string[], kept: [] as string[] };
  for (const id of await retiredIds(ctx.buckets.templates)) {
    const gone = await reapOne(ctx, id).catch((err: unknown) => {
      ctx.log.warn({ err, snapshot: id }, 'reaping a retired template snapshot failed');
      return false;
    });
    (gone ? out.deleted : out.kept).push(id);
  }
  return out;
}
