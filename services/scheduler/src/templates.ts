import { NotFoundError, asForkyError } from '@forky/base';
import type { TemplateDeleteResult, TemplateInfo, TemplateList } from '@forky/contract';
import type { SchedContext } from './context.js';
import { deleteSnapshot } from './lineage.js';
import { reapBuilds } from './template-build.js';
import {
  getRetired,
  getTemplate,
  listTemplates,
  markHomeDeleted,
  removeTemplate,
  resolveTemplate,
  retiredIds,
  unretire,
} from './template-store.js';

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

/** After its home copy went, how long a retired snapshot's record outlives the last heartbeat that listed a copy (a fetch may be under way). */
export const COPY_GRACE = { ms: 5 * 60_000 };

/**
 * Deletes one retired snapshot if nothing uses it any more; true once its home copy is gone. A
 * snapshot a template still names is skipped (a write that retired it then failed). The record
 * stays, once the home copy is gone, until no host's last heartbeat lists a copy (deleted on each
 * live holder; a host that is down keeps the record) for COPY_GRACE. Safe to run on several
 * schedulers at once: a delete that lost the race finds the snapshot gone.
 */
export async function reapOne(ctx: SchedContext, id: string): Promise<boolean> {
  const kv = ctx.buckets.templates;
  if ((await listTemplates(kv, ctx.log)).templates.some((t) => t.snapshot === id)) return false;
  const cur = await getRetired(kv, id, ctx.log);
  if (!cur) return true;
  let rec = cur.value;
  if (!rec.homeDeletedAt) {
    const home = await ctx.locate('snap', id).catch((e: unknown) => {
      if (asForkyError(e).code !== 'NOT_FOUND') throw e;
      return undefined;
    });
    // A host that is down cannot answer: the next round tries again (a call would wait out its deadline).
    if (home && !ctx.hosts.statuses().some((h) => h.id === home && h.alive)) return false;
    if (home && !(await deleted(ctx, id))) return false;
    rec = await markHomeDeleted(kv, cur, ctx.log);
  }
  let listed = false;
  for (const b of ctx.hosts.beats().filter((x) => x.snapshotIds.includes(id))) {
    listed = true;
    if (b.status.alive)
      await ctx.hosts
        .client(b.status.id)
        .call('snapshot.delete', { id, cascade: false })
        .catch((err: unknown) => {
          if (asForkyError(err).code !== 'NOT_FOUND')
            ctx.log.warn({ err, snapshot: id, host: b.status.id }, 'deleting a fetched copy failed');
        });
  }
  if (!listed && Date.now() - Date.parse(rec.homeDeletedAt ?? '') >= COPY_GRACE.ms) await unretire(kv, id, ctx.log);
  return true;
}

/** Deletes the snapshot everywhere it is known; false while VMs (or snapshots) still depend on it. */
async function deleted(ctx: SchedContext, id: string): Promise<boolean> {
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
  return true;
}

/** One round of the reaper: every retired snapshot that nothing uses is deleted, and ended builds are cleaned up. */
export async function reapRetired(ctx: SchedContext): Promise<{ deleted: string[]; kept: string[] }> {
  const out = { deleted: [] as string[], kept: [] as string[] };
  for (const id of await retiredIds(ctx.buckets.templates)) {
    const gone = await reapOne(ctx, id).catch((err: unknown) => {
      ctx.log.warn({ err, snapshot: id }, 'reaping a retired template snapshot failed');
      return false;
    });
    (gone ? out.deleted : out.kept).push(id);
  }
  await reapBuilds(ctx).catch((err: unknown) => ctx.log.warn({ err }, 'sweeping template build records failed'));
  return out;
}
