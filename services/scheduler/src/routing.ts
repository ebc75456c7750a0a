import {
  snapshotMatches,
  vmMatches,
  type ExecRequest,
  type GuestEndpoint,
  type HostdEndpoint,
  type SnapshotInfo,
  type SnapshotListRequest,
  type IdleRule,
  type VmAppRequest,
  type VmExtendRequest,
  type VmInfo,
  type VmListRequest,
  type VmNetworkRequest,
} from '@forky/contract';
import type { SchedContext } from './context.js';

/** The requests about one VM or snapshot, which its host answers. */
export type Forwarded =
  'vm.show' | 'vm.pause' | 'vm.resume' | 'vm.destroy' | 'vm.exec' | 'vm.app' | 'vm.network' | 'vm.extend' | 'snapshot.show';
export type ForwardedRequest<E extends Forwarded> = E extends 'vm.exec'
  ? ExecRequest
  : E extends 'vm.app'
    ? VmAppRequest
    : E extends 'vm.network'
      ? VmNetworkRequest
      : E extends 'vm.extend'
        ? VmExtendRequest
        : { id: string };

/** A request's TTL and idle rule, for the host's boot or fork: only those given (its schema is strict). */
export const lifetimeOf = (r: { ttlMs?: number | undefined; idle?: IdleRule | undefined }): { ttlMs?: number; idle?: IdleRule } => ({
  ...(r.ttlMs === undefined ? {} : { ttlMs: r.ttlMs }),
  ...(r.idle ? { idle: r.idle } : {}),
});

/**
 * Forwards a request about one VM or snapshot to the host that holds it, once and whole: an
 * exec's `key`, if the client gave one, goes with it (hostd dedupes exec by key). It is not
 * re-sent here: a keyless exec or destroy must not run twice.
 */
export async function forward<E extends Forwarded>(ctx: SchedContext, endpoint: E, req: ForwardedRequest<E>): Promise<unknown> {
  const kind = endpoint.startsWith('vm.') ? 'vm' : 'snap';
  const host = await ctx.locate(kind, req.id);
  return ctx.hosts.client(host).call(endpoint as HostdEndpoint, req as never);
}

/**
 * Forwards a sandbox request (STREAMS.md) to the VM's host, once: an open's reply names the
 * host's own stream subjects, so the stream's bytes never come through here.
 */
export async function forwardGuest(ctx: SchedContext, endpoint: GuestEndpoint, req: { id: string }): Promise<unknown> {
  const host = await ctx.locate('vm', req.id);
  return ctx.hosts.client(host).call(endpoint, req as never);
}

/**
 * Every live host's VMs (or snapshots) that match `filter`; a host that does not answer is left
 * out and logged. Each host filters its own list; what comes back is filtered here again, with the
 * lost VMs (from heartbeats), so a host that ignored the filter cannot widen the answer.
 */
export async function gather(
  ctx: SchedContext,
  endpoint: 'vm.list' | 'snapshot.list',
  filter: VmListRequest & SnapshotListRequest = {},
): Promise<unknown[]> {
  const beats = ctx.hosts.beats();
  const live = beats.map((b) => b.status).filter((h) => h.alive);
  // A down host's VMs are shown as lost (from its last heartbeat), not silently dropped.
  const lost =
    endpoint === 'vm.list' ? beats.filter((b) => !b.status.alive).flatMap((b) => b.vms.map((v) => ({ ...v, state: 'lost' as const }))) : [];
  const lists = await Promise.all(
    live.map(async (h) => {
      try {
        const c = ctx.hosts.client(h.id);
        return endpoint === 'vm.list'
          ? (await c.call('vm.list', vmFilter(filter), { timeoutMs: 10_000 })).vms
          : (await c.call('snapshot.list', snapshotFilter(filter), { timeoutMs: 10_000 })).snapshots;
      } catch (err) {
        ctx.log.warn({ err, host: h.id }, `${endpoint} failed on a host`);
        return [];
      }
    }),
  );
  const all = [...lists.flat(), ...lost];
  return endpoint === 'vm.list'
    ? (all as VmInfo[]).filter((v) => vmMatches(v, filter))
    : (all as SnapshotInfo[]).filter((s) => snapshotMatches(s, filter));
}

/** Only the fields each endpoint takes (its schema is strict). */
const vmFilter = ({ labels, state, image, template, parent }: VmListRequest): VmListRequest => ({
  ...(labels ? { labels } : {}),
  ...(state ? { state } : {}),
  ...(image ? { image } : {}),
  ...(template ? { template } : {}),
  ...(parent ? { parent } : {}),
});
const snapshotFilter = ({ labels, vm, image }: SnapshotListRequest): SnapshotListRequest => ({
  ...(labels ? { labels } : {}),
  ...(vm ? { vm } : {}),
  ...(image ? { image } : {}),
});
