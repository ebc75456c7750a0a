import { createHash } from 'node:crypto';
import { ForkyError, asForkyError } from '@forky/base';
import { outsideCaller } from '@forky/bus';
import type { BatchRequest, BatchResult, ForkResult, SchedForkRequest, TransferResult } from '@forky/contract';
import type { SchedContext } from './context.js';
import { sourceKind } from './directory-reads.js';
import { triedAgain } from './jobs.js';
import { placeChildren } from './placement.js';
import { lifetimeOf } from './routing.js';

/**
 * Forks `req.count` children of a VM or snapshot. All at home, hostd does it in one call (it
 * snapshots a VM source itself); otherwise the source is frozen once at home, its snapshot
 * published, and each target fetches what it lacks and forks its share, in parallel. A target
 * that fails has its share placed on the others, twice at most; a failure at home fails the fork.
 * `last`: this is the job's last delivery (a transient failure before it is tried again, same key).
 */
export async function fork(ctx: SchedContext, req: Omit<SchedForkRequest, 'key'>, key: string, last: boolean): Promise<ForkResult> {
  const started = performance.now();
  const kind = sourceKind(req.source);
  const home = await ctx.locate(kind, req.source);
  const plan = placeChildren(ctx.hosts.statuses(), home, req.count, ctx.childCostMiB, req);
  const apps = req.apps ? { apps: req.apps } : {};
  if (plan.size === 1 && plan.has(home)) {
    const alone = ctx.hosts.onHost(home, (c) =>
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
    // Given up for good with its outcome unknown: what the host still makes of it is undone there.
    return alone.catch((e: unknown) => {
      if ((last || !triedAgain(asForkyError(e))) && mayHaveStarted(e)) abandonShare(ctx, home, key);
      throw e;
    });
  }
  const snapshot =
    kind === 'vm'
      ? await ctx.hosts.onHost(home, (c) =>
          c.call('snapshot.create', { vm: req.source, resume: req.resumeParent, key: subKey(key, 'snapshot') }),
        )
      : await ctx.hosts.onHost(home, (c) => c.call('snapshot.show', { id: req.source }));
  const snapshotMs = performance.now() - started;
  // Published once, from the moment it is frozen: the home share forks meanwhile, each target
  // fetches once it is there (a failed publish fails the fork with its error: no share is re-placed).
  const published = ctx.hosts.onHost(home, (c) => c.call('snapshot.publish', { id: snapshot.id }));
  published.catch(() => undefined);
  const transfers: TransferResult[] = [];
  const keyOf = ([host, count, first]: Share): string => subKey(key, `${host}/${first}/${count}`);
  const forkOn = (host: string, count: number, attempt: number, first: number): Promise<ForkResult> =>
    ctx.hosts.onHost(host, async (c) => {
      if (host !== home) {
        // A rejected publish is the fork's failure, not this target's: its share is not re-placed.
        await published.catch((e: unknown) => {
          throw new PublishRejected(e);
        });
        transfers.push(await c.call('snapshot.fetch', { id: snapshot.id }));
      }
      const own = labelsOf(req, first, count);
      return c.call('fork', {
        source: snapshot.id,
        count,
        until: req.until,
        ...apps,
        ...own,
        ...lifetimeOf(req),
        // The share's own key on that host: tried there again, it is replayed, never made twice.
        key: keyOf([host, count, first]),
      });
    });
  const results = await forkShares(ctx, home, plan, forkOn, keyOf, last);
  const pub = await published.catch(() => undefined);
  return {
    snapshot,
    children: results.flatMap((r) => r.children),
    transfers: pub ? [pub, ...transfers] : transfers,
    timings: {
      snapshotMs: Math.round(snapshotMs * 10) / 10,
      totalMs: Math.round((performance.now() - started) * 10) / 10,
      childMs: results.flatMap((r) => r.timings.childMs),
    },
  };
}

/** A target's share failed because the source's publish did: carries the publish's error. */
class PublishRejected extends Error {
  override readonly name = 'PublishRejected';
  constructor(override readonly cause: unknown) {
    super('the publish of the fork source failed');
  }
}

/** The fork's labels, and the `perChild` entries of children `first` to `first + count - 1`, for one host's share. */
function labelsOf(req: Omit<SchedForkRequest, 'key'>, first: number, count: number): Pick<SchedForkRequest, 'labels' | 'perChild'> {
  return { ...(req.labels ? { labels: req.labels } : {}), ...(req.perChild ? { perChild: req.perChild.slice(first, first + count) } : {}) };
}

/**
 * Runs every host's share of a fork, and replans the shares of the hosts that failed (down, or
 * gone mid-fork) on the live others; a share that timed out on a host still up is asked there
 * again under its own key. If the fork fails for good, the shares made are destroyed; if it is
 * tried again (a transient failure, not the job's last delivery) they stay, as the retry replays
 * them under the same keys (their hosts remember them: destroyed, they would be handed back dead).
 */
async function forkShares(
  ctx: SchedContext,
  home: string,
  plan: Map<string, number>,
  forkOn: (host: string, count: number, attempt: number, first: number) => Promise<ForkResult>,
  keyOf: (s: Share) => string,
  last: boolean,
): Promise<ForkResult[]> {
  const results: Array<[Share, ForkResult]> = [];
  const unknown = new Map<string, Share>();
  try {
    return await forkEach(ctx, home, plan, forkOn, keyOf, results, unknown);
  } catch (e) {
    // All or nothing: the shares made go with a fork failed for good (their children must not run on as its),
    // and so do those whose outcome is unknown, once their hosts end them.
    if (last || !triedAgain(asForkyError(e))) {
      for (const s of unknown.values()) abandonShare(ctx, s[0], keyOf(s));
      await undoShares(ctx, results, keyOf);
    }
    throw e;
  }
}

/** A host's share of a fork: [host, count, index of its first child]. */
type Share = [string, number, number];

/**
 * Whether a failed call may still be going on at its host: it timed out, or was given up on
 * liveness (a host too busy to answer can still be making the children). A host's own refusal
 * (any other code) left nothing behind: its steps roll back.
 */
function mayHaveStarted(e: unknown): boolean {
  const code = asForkyError(e).code;
  return code === 'TIMEOUT' || code === 'UNAVAILABLE';
}

/** How long the scheduler waits to hear that a share it gave up was undone (a host busy for minutes still reads it). */
const ABANDON_TIMEOUT_MS = 300_000;

/** Tells a host that the keyed fork share `key` is given up for good (fork.abandon); not awaited, logged. */
function abandonShare(ctx: SchedContext, host: string, key: string): void {
  const gaveUp = (err: unknown): void =>
    void ctx.log.warn({ err, host, key }, 'a fork share given up could not be undone: its children may run on');
  try {
    outsideCaller(() => ctx.hosts.client(host).call('fork.abandon', { key }, { timeoutMs: ABANDON_TIMEOUT_MS })).then(
      (r) => ctx.log.info({ host, key, ...r }, 'a fork share given up: told its host'),
      gaveUp,
    );
  } catch (err) {
    gaveUp(err);
  }
}

async function forkEach(
  ctx: SchedContext,
  home: string,
  plan: Map<string, number>,
  forkOn: (host: string, count: number, attempt: number, first: number) => Promise<ForkResult>,
  keyOf: (s: Share) => string,
  results: Array<[Share, ForkResult]>,
  /** Shares failed in a way that may still be going on at their hosts (mayHaveStarted), by their keys. */
  unknown: Map<string, Share>,
): Promise<ForkResult[]> {
  // A child's perChild entry follows it to any host.
  let next = 0;
  let pending = [...plan.entries()].map(([h, n]): Share => [h, n, (next += n) - n]);
  for (let attempt = 0; pending.length > 0; attempt++) {
    const settled = await Promise.allSettled(pending.map(([h, n, f]) => forkOn(h, n, attempt, f)));
    const failed: Share[] = [];
    const reasons: unknown[] = [];
    settled.forEach((r, i) => {
      const share = pending[i] as Share;
      const [h] = share;
      // Only its answer settles a share: a re-ask refused before its fork was sent (a failed fetch) leaves the first run unknown.
      if (r.status === 'fulfilled') {
        unknown.delete(keyOf(share));
        results.push([share, r.value]);
      } else {
        ctx.log.warn({ host: h, err: r.reason }, 'a host failed its share of a fork');
        failed.push(share);
        reasons.push(r.reason);
        if (mayHaveStarted(r.reason)) unknown.set(keyOf(share), share);
      }
    });
    if (failed.length === 0) break;
    const rejected = reasons.find((r): r is PublishRejected => r instanceof PublishRejected);
    if (rejected) throw asForkyError(rejected.cause);
    const first = settled.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    const retryable = failed.every(([h]) => h !== home) && attempt < 2;
    if (!retryable) throw asForkyError(first.reason);
    const live = ctx.hosts.statuses().filter((h) => h.alive);
    const alive = new Set(live.map((h) => h.id));
    const down = new Set(failed.map(([h]) => h));
    const rest = live.filter((h) => !down.has(h.id));
    const again: Share[] = [];
    for (const [i, [h, n, f]] of failed.entries()) {
      // Timed out on a host still up: it may have made them; asked again there under the same key, it replays.
      if (asForkyError(reasons[i]).code === 'TIMEOUT' && alive.has(h)) {
        again.push([h, n, f]);
        continue;
      }
      // Placed elsewhere: what its first host may still make of it is not this fork's.
      const key = keyOf([h, n, f]);
      if (unknown.delete(key)) abandonShare(ctx, h, key);
      let at = f;
      for (const [to, m] of placeChildren(rest, home, n, ctx.childCostMiB, { spread: true })) {
        again.push([to, m, at]);
        at += m;
      }
    }
    pending = again;
  }
  // In child order, so that children[i] is the one given perChild[i].
  return results.sort((a, b) => a[0][2] - b[0][2]).map(([, r]) => r);
}

/**
 * Undoes the shares made (best effort: one that fails is logged, the fork's error stands): each
 * is abandoned under its key, so its host destroys its children and forgets the key (a destroy
 * alone left the key, and a later fork under it was handed the dead children back). A child the
 * abandon did not destroy (a hostd that no longer knew the key) is destroyed by id.
 */
async function undoShares(ctx: SchedContext, made: ReadonlyArray<[Share, ForkResult]>, keyOf: (s: Share) => string): Promise<void> {
  const children = made.flatMap(([, r]) => r.children);
  if (children.length > 0) ctx.log.warn({ children: children.map((c) => c.id) }, 'a fork failed: destroying the children it made');
  const lost = (err: unknown, vm: string, host: string): void =>
    ctx.log.error({ err, vm, host }, 'a child of a failed fork was not destroyed');
  await Promise.all(
    made.map(async ([s, r]) => {
      const host = s[0];
      const gone = await ctx.hosts
        .onHost(host, (h) => h.call('fork.abandon', { key: keyOf(s) }))
        .then(
          (a) => new Set(a.destroyed),
          () => new Set<string>(),
        );
      await Promise.all(
        r.children
          .filter((c) => !gone.has(c.id))
          .map((c) =>
            ctx.hosts
              .onHost(host, (h) => h.call('vm.destroy', { id: c.id }))
              .catch((err: unknown) => asForkyError(err).code !== 'NOT_FOUND' && lost(err, c.id, host)),
          ),
      );
    }),
  );
}

/**
 * Forks each item of a batch, one after another (each fork already runs its children in parallel
 * on its host); an item's failure is its result, not the batch's. `last` says whether this is the
 * job's last attempt.
 */
export async function batch(ctx: SchedContext, req: BatchRequest, key: string, last: boolean): Promise<BatchResult> {
  const results: BatchResult['results'] = [];
  let transient = 0;
  for (const [i, item] of req.items.entries()) {
    try {
      results.push({ ok: true, result: await fork(ctx, item, subKey(key, i), last) });
    } catch (e) {
      const fe = asForkyError(e);
      // The same test as the item's fork made: an item that kept its shares for a retry gets one.
      if (triedAgain(fe)) transient++;
      results.push({ ok: false, error: { code: fe.code, message: fe.message } });
    }
  }
  // Items whose host went away are tried again with the job (the done ones are replayed by
  // their hosts under the same keys), unless this is its last attempt.
  if (transient > 0 && !last)
    throw new ForkyError('UNAVAILABLE', `${transient} of ${results.length} batch items failed on hosts that did not answer`);
  return { results };
}

/** A key per batch item (or per host of a fork), derived so that a retry reuses them. */
export function subKey(key: string, i: number | string): string {
  return `b${createHash('sha256').update(`${key}/${i}`).digest('base64url').slice(0, 30)}`;
}
