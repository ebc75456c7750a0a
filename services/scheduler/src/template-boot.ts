import { NotFoundError, ValidationError, asForkyError } from '@forky/base';
import type { SchedBootRequest, TemplateInfo, VmInfo } from '@forky/contract';
import type { SchedContext } from './context.js';
import { subKey } from './fork.js';
import { TRANSIENT } from './jobs.js';
import { pickHost } from './placement.js';
import { lifetimeOf } from './routing.js';
import { bootHost, dropBootHost, resolveTemplate } from './template-store.js';

/**
 * Refuses, naming the field, what a VM of template `t` cannot be: its image, RAM and vCPUs are
 * fixed by the snapshot (a restore must match them exactly), its disk is the template's, and a
 * VM with GPUs cannot be forked.
 */
export function checkTemplateBoot(t: TemplateInfo, req: SchedBootRequest): void {
  const fixed = [
    ['image', req.image, t.image],
    ['memMiB', req.memMiB, t.memMiB],
    ['cpus', req.cpus, t.cpus],
  ] as const;
  for (const [field, asked, has] of fixed) {
    if (asked !== undefined && asked !== has)
      throw new ValidationError(`template ${t.name} has ${field} ${has}, fixed by its snapshot; ${field} ${asked} asked (leave it out)`, {
        field,
      });
  }
  if (req.diskGiB !== undefined)
    throw new ValidationError(`a VM of template ${t.name} has the template's disk; diskGiB cannot be given with template`, {
      field: 'diskGiB',
    });
  // A fork cannot take a name yet (a name is unique in the cluster and set at boot).
  if (req.name !== undefined)
    throw new ValidationError(`a VM of template ${t.name} is a fork, and a fork cannot be named yet; name cannot be given with template`, {
      field: 'name',
    });
  if (req.gpus > 0)
    throw new ValidationError(
      `a VM of template ${t.name} is a fork, and a VM with GPUs cannot be forked; gpus cannot be given with template`,
      {
        field: 'gpus',
      },
    );
}

/** The template a boot names, checked against the request: what can be refused before a job is queued. */
export async function templateFor(ctx: SchedContext, req: SchedBootRequest & { template: string }): Promise<TemplateInfo> {
  const t = await resolveTemplate(ctx.buckets.templates, req.template, ctx.log);
  checkTemplateBoot(t, req);
  return t;
}

/**
 * A boot from a template: a fork of its snapshot on the host placement picks (by free memory,
 * or `host`). A host that lacks the snapshot fetches it from the object store first (its home
 * need not be up). `network`, if given, is the child's from its start; `apps` are mounted by the fork.
 */
export async function bootFromTemplate(ctx: SchedContext, req: SchedBootRequest & { template: string }, key: string): Promise<VmInfo> {
  const t = await templateFor(ctx, req);
  const home = await ctx.locate('snap', t.snapshot).catch((e: unknown) => {
    if (asForkyError(e).code === 'NOT_FOUND') throw new NotFoundError(`snapshot of template ${t.name}:`, t.snapshot);
    throw e;
  });
  // The host is chosen once per job: a delivery after a fork that timed out there must join it, not fork again elsewhere.
  const kv = ctx.buckets.templates;
  const host = await bootHost(
    kv,
    key,
    (was) =>
      was && ctx.hosts.statuses().some((h) => h.id === was && h.alive)
        ? was
        : pickHost(ctx.hosts.statuses(), { memMiB: ctx.childCostMiB, count: 1 }, req.host),
    ctx.log,
  );
  try {
    const vm = await ctx.hosts.onHost(host, async (c) => {
      if (host !== home) await c.call('snapshot.fetch', { id: t.snapshot });
      const r = await c.call('fork', {
        source: t.snapshot,
        count: 1,
        until: 'ready',
        ...(req.apps ? { apps: req.apps } : {}),
        ...(req.labels ? { labels: req.labels } : {}),
        // The boot's TTL and idle rule; without them the child takes the template snapshot's (hostd, child.ts). The template's name for `vm.list {template}`.
        ...lifetimeOf(req),
        template: t.name,
        // Filtered so before the child's vCPUs run: it never has the template's egress.
        ...(req.network ? { network: req.network } : {}),
        key: subKey(key, 'fork'),
      });
      return r.children[0] as VmInfo;
    });
    await dropBootHost(kv, key, ctx.log);
    return vm;
  } catch (e) {
    if (!TRANSIENT.has(asForkyError(e).code)) await dropBootHost(kv, key, ctx.log);
    throw e;
  }
}
