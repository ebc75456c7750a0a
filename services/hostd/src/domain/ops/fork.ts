import { ForkyError, Semaphore, asForkyError, mapSettled } from '@forky/base';
import type { ForkRequest, ForkResult } from '@forky/contract';
import { admitVms, checkProfile, ramNeed, refuseGpuSnapshot, type RamHold } from '../admission.js';
import { round, type Host } from '../host.js';
import { withRollback } from '../rollback.js';
import { Arrivals, ChildNotStarted, checkForkLabels, childShare, restoreChild } from './child.js';
import { destroyVm } from './lifecycle.js';
import { snapshotVm } from './snapshot.js';
import type { ForkOwn } from '../self-fork-tree.js';

/**
 * Forks `count` children of a snapshot, or of a VM (snapshotted first). Every refusal comes before
 * the source is touched; all or nothing: a fork that half-worked leaves no children behind.
 */
export async function fork(host: Host, req: ForkRequest, own: ForkOwn = {}): Promise<ForkResult> {
  // The children's apps are fetched (or refused) before the source is touched.
  const unpin = await host.apps.prefetch(req.apps ?? []);
  try {
    return await host.ram.during((hold) => forkWithin(host, req, hold, own));
  } finally {
    unpin();
  }
}

async function forkWithin(host: Host, req: ForkRequest, hold: RamHold, own: ForkOwn): Promise<ForkResult> {
  const { d } = host;
  const started = performance.now();
  await admitVms(host, d.limits.childCostMiB, req.count);
  const fromVm = req.source.startsWith('vm-');
  if (fromVm) refuseGpuSnapshot(host, req.source, 'source');
  checkForkLabels(host, req);
  if (req.apps?.length)
    host.apps.plan(
      { id: `each child of ${req.source}`, apps: (fromVm ? host.vms.get(req.source) : host.snaps.get(req.source))?.apps ?? [] },
      req.apps,
    );
  await hold.admit(
    fromVm ? ramNeed.forkVm(host.vm(req.source)) : ramNeed.forkSnapshot(host.snap(req.source).info, d.snapshots.files(req.source).ram),
    'source',
  );
  const snap = fromVm ? await snapshotVm(host, req.source, req.resumeParent, hold) : host.snap(req.source);
  const pauseMs = fromVm ? snap.info.timings?.pauseMs : undefined;
  const snapshotMs = performance.now() - started;
  const sid = snap.info.id;
  host.snapUsers.set(sid, (host.snapUsers.get(sid) ?? 0) + 1);
  try {
    return await withRollback(host.log, { fork: req.source }, async (rb) => {
      // By id: the snapshot's own bytes, whatever its image's name means on this host now.
      const image = await d.images.byId(snap.info.profile.imageId, snap.info.image);
      checkProfile(host, snap.info.profile, image);
      const opts = {
        started,
        until: req.until,
        ...(req.key ? { requestKey: req.key } : {}),
        ...(req.apps ? { apps: req.apps } : {}),
        ...(req.network ? { egress: req.network.egress } : {}),
        ...(req.ttlMs === undefined ? {} : { ttlMs: req.ttlMs }),
        ...(req.idle ? { idle: req.idle } : {}),
        ...(req.template ? { template: req.template } : {}),
      };
      // Every child is under way at once, but only `forkConcurrency` start and load at a time: the
      // ones running wait for their agents together (as the raw floor does), instead of each slot
      // holding its turn through the guest's answer while the guests already up take the CPU.
      const starts = new Semaphore(d.limits.forkConcurrency);
      const loads = new Arrivals(req.count);
      const failFast = new AbortController();
      const results = await mapSettled(Array.from({ length: req.count }), req.count, (_, i) =>
        restoreChild(host, snap, image, {
          ...opts,
          starts,
          loads,
          // As many rounds of `forkConcurrency` as the fork has children: each round's worth of
          // guests settling at once gets the configured deadlines again.
          settleScale: Math.ceil(req.count / d.limits.forkConcurrency),
          ...childShare(req, i),
          ...(own.selfFork ? { selfFork: { ...own.selfFork, index: i + 1 } } : {}),
          failFast,
        }).catch((e: unknown) => {
          failFast.abort();
          throw e;
        }),
      );
      const children = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      // All at once, as they were made.
      rb.push('destroy the children', () => Promise.all(children.map((c) => destroyVm(host, c.id).catch(() => undefined))));
      const rejected = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
      const failed = rejected.filter((e) => !(e instanceof ChildNotStarted));
      if (rejected.length > 0) {
        const first = failed[0] ?? rejected[0];
        const skipped = rejected.length - failed.length;
        const msg = `${failed.length} of ${req.count} children failed; none kept${skipped ? ` (${skipped} not started)` : ''}: ${first instanceof Error ? first.message : String(first)}`;
        throw new ForkyError(asForkyError(first).code, msg, { cause: first });
      }
      host.events.forked(snap.info, children, fromVm ? host.vms.get(req.source) : undefined, own.reason);
      host.pool.refill(sid);
      return {
        snapshot: snap.info,
        children,
        timings: {
          snapshotMs: round(snapshotMs),
          ...(pauseMs === undefined ? {} : { pauseMs }),
          totalMs: round(performance.now() - started),
          childMs: children.map((c) => c.timings?.readyMs ?? 0),
        },
      };
    });
  } finally {
    host.snapUsers.set(sid, (host.snapUsers.get(sid) ?? 1) - 1);
  }
}
