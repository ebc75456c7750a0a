import { createHash } from 'node:crypto';
import { ForkyError, asForkyError, type ErrorCode } from '@forky/base';
import type { BatchRequest, BatchResult, ForkResult, SchedForkRequest, TransferResult } from '@forky/contract';
import type { SchedContext } from './context.js';
import { sourceKind } from './directory-reads.js';
import { TRANSIENT } from './jobs.js';
import { placeChildren } from './placement.js';
import { lifetimeOf } from './routing.js';

/**
 * Forks `req.count` children of a VM or snapshot. All at home, hostd does it in one call (it
 * snapshots a VM source itself); otherwise the source is frozen once at home, its snapshot
 * published, and each target fetches what it lacks and forks its share, in parallel. A target
 * that fails has its share placed on the others, twice at most; a failure at home fails the fork.
 */
export async function fork(ctx: SchedContext, req: Omit<SchedForkRequest, 'key'>, key: string): Promise<ForkResult> {
  const started = performance.now();
  const kind = sourceKind(req.source);
  const home = await ctx.locate(kind, req.source);
  const plan = placeChildren(ctx.hosts.statuses(), home, req.count, ctx.childCostMiB, req);
  const apps = req.apps ? { apps: req.apps } : {};
  if (plan.size === 1 && plan.has(home)) {
    return ctx.hosts.onHost(home, (c) =>
      c.call('fork', {
        source: req.source,
        count: req.count,
        resumeParent: req.resumeParent,
        until: req.until,
        ...apps,
        ...labelsOf(req, 0, req.count),
        ...lifetimeOf(req),
        key,
      }),
    );
  }
  const snapshot =
    kind === 'vm'
      ? await ctx.hosts.onHost(home, (c) =>
          c.call('snapshot.create', { vm: req.source, resume: req.resumeParent, key: subKey(key, 'snapshot') }),
        )
      : await ctx.hosts.onHost(home, (c) => c.call('snapshot.show', { id: req.source }));
  const snapshotMs = performance.now() - started;
  // Published once, up front; each target then fetches what it lacks and forks, in parallel.
  const transfers: TransferResult[] = [await ctx.hosts.onHost(home, (c) => c.call('snapshot.publish', { id: snapshot.id }))];
  const forkOn = (host: string, count: number, attempt: number, first: number): Promise<ForkResult> =>
    ctx.hosts.onHost(host, async (c) => {
      if (host !== home) transfers.push(await c.call('snapshot.fetch', { id: snapshot.id }));
      const own = labelsOf(req, first, count);
      return c.call('fork', {
        source: snapshot.id,
        count,
        until: req.until,
        ...apps,
        ...own,
        ...lifetimeOf(req),
        key: subKey(key, `${host}/${attempt}/${first}`),
      });
    });
  const results = await forkShares(ctx, home, plan, forkOn);
  return {
    snapshot,
    children: results.flatMap((r) => r.children),
    transfers,
    timings: {
      snapshotMs: Math.round(snapshotMs * 10) / 10,
      totalMs: Math.round((performance.now() - started) * 10) / 10,
      childMs: results.flatMap((r) => r.timings.childMs),
    },
  };
}

/** The fork's labels, and the `perChild` entries of children `first` to `first + count - 1`, for one host's share. */
function labelsOf(req: Omit<SchedForkRequest, 'key'>, first: number, count: number): Pick<SchedForkRequest, 'labels' | 'perChild'> {
  return { ...(req.labels ? { labels: req.labels } : {}), ...(req.perChild ? { perChild: req.perChild.slice(first, first + count) } : {}) };
}

/**
 * Runs every host's share of a fork, and replans the shares of the hosts that failed (down, or
 * gone mid-fork) on the live others, under a new key per host and attempt.
 */
async function forkShares(
  ctx: SchedContext,
  home: string,
  plan: Map<string, number>,
  forkOn: (host: string, count: number, attempt: number, first: number) => Promise<ForkResult>,
): Promise<ForkResult[]> {
  const results: Array<[number, ForkResult]> = [];
  // Each share is [host, count, index of its first child]: a child's perChild entry follows it to any host.
  let next = 0;
  let pending = [...plan.entries()].map(([h, n]): [string, number, number] => [h, n, (next += n) - n]);
  for (let attempt = 0; pending.length > 0; attempt++) {
    const settled = await Promise.allSettled(pending.map(([h, n, f]) => forkOn(h, n, attempt, f)));
    const failed: Array<[string, number, number]> = [];
    settled.forEach((r, i) => {
      const [h, n, f] = pending[i] as [string, number, number];
      if (r.status === 'fulfilled') results.push([f, r.value]);
      else {
        ctx.log.warn({ host: h, err: r.reason }, 'a host failed its share of a fork');
        failed.push([h, n, f]);
      }
    });
    if (failed.length === 0) break;
    const first = settled.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    const retryable = failed.every(([h]) => h !== home) && attempt < 2;
    if (!retryable) throw asForkyError(first.reason);
    const down = new Set(failed.map(([h]) => h));
    const rest = ctx.hosts.statuses().filter((h) => h.alive && !down.has(h.id));
    const again: Array<[string, number, number]> = [];
    for (const [, n, f] of failed) {
      let at = f;
      for (const [h, m] of placeChildren(rest, home, n, ctx.childCostMiB, { spread: true })) {
        again.push([h, m, at]);
        at += m;
      }
    }
    pending = again;
  }
  // In child order, so that children[i] is the one given perChild[i].
  return results.sort((a, b) => a[0] - b[0]).map(([, r]) => r);
}

/**
 * Forks each item of a batch, one after another (each fork already runs its children in parallel
 * on its host); an item's failure is its result, not the batch's. `last` says whether this is the
 * job's last attempt.
 */
export async function batch(ctx: SchedContext, req: BatchRequest, key: string, last: boolean): Promise<BatchResult> {
  const results: BatchResult['results'] = [];
  for (const [i, item] of req.items.entries()) {
    try {
      results.push({ ok: true, result: await fork(ctx, item, subKey(key, i)) });
    } catch (e) {
      const fe = asForkyError(e);
      results.push({ ok: false, error: { code: fe.code, message: fe.message } });
    }
  }
  // Items whose host went away are tried again with the job (the done ones are replayed by
  // their hosts under the same keys), unless this is its last attempt.
  const transient = results.filter((r) => !r.ok && TRANSIENT.has(r.error.code as ErrorCode)).length;
  if (transient > 0 && !last)
    throw new ForkyError('UNAVAILABLE', `${transient} of ${results.length} batch items failed on hosts that did not answer`);
  return { results };
}

/** A key per batch item (or per host of a fork), derived so that a retry reuses them. */
export function subKey(key: string, i: number | string): string {
  return `b${createHash('sha256').update(`${key}/${i}`).digest('base64url').slice(0, 30)}`;
}
