import { ConflictError, asForkyError } from '@forky/base';
import { retryTransient } from '@forky/bus';
import type { LineageNode, SnapshotDeleteResult, SnapshotTree } from '@forky/contract';
import type { SchedContext } from './context.js';
import { lineageNodes } from './directory-reads.js';

/** The lineage of every snapshot, as hosts recorded it in JetStream, oldest first. */
export async function tree(ctx: SchedContext): Promise<SnapshotTree> {
  // Read whole again if the cluster fails over half-way (a read is safe to repeat).
  const nodes = await retryTransient('lineage read', () => lineageNodes(ctx.buckets.lineage, ctx.log), { log: ctx.log });
  nodes.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  return { nodes };
}

/**
 * Deletes a snapshot on every host that holds a copy (copies first, the origin last, which
 * retires it from the object store and the lineage). With `cascade`, the snapshots below it in
 * the lineage go first, leaves first, each with the VMs that depend on it; refused before anything
 * goes if that would take the VM `id` was taken from.
 */
export async function deleteSnapshot(ctx: SchedContext, id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
  const origin = await ctx.locate('snap', id);
  // Without cascade, each host refuses for what physically depends on the snapshot there.
  const nodes = cascade ? (await tree(ctx)).nodes : [];
  const below = cascade ? descendants(nodes, id) : [];
  const sources = cascade ? await sourcesGoing(ctx, origin, id, nodes, [id, ...below]) : new Map<string, LineageNode[]>();
  const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
  for (const s of [...below.reverse(), id]) {
    const home = await ctx.locate('snap', s).catch(() => undefined);
    if (!home) continue;
    // A hostd never cascades to the VM a snapshot was taken from: the walk destroys those it takes itself.
    for (const n of sources.get(s) ?? []) if (await destroyed(ctx, n)) out.vms.push(n.vm);
    const holders = ctx.hosts
      .beats()
      .filter((b) => b.status.alive && b.status.id !== home && b.snapshotIds.includes(s))
      .map((b) => b.status.id);
    for (const h of [...holders, home]) {
      const r = await ctx.hosts.client(h).call('snapshot.delete', { id: s, cascade });
      out.vms.push(...r.vms);
      if (h === home) out.snapshots.push(...r.snapshots.filter((x) => !out.snapshots.includes(x)));
    }
  }
  return out;
}

/**
 * The VMs alive that the walk over `going` takes, by the snapshot they go with: a VM runs on the
 * RAM of its latest snapshot, so it goes when that one does. If one is the VM `id` was taken from,
 * the delete is refused (CONFLICT) here, before anything goes.
 */
async function sourcesGoing(
  ctx: SchedContext,
  origin: string,
  id: string,
  nodes: readonly LineageNode[],
  going: readonly string[],
): Promise<Map<string, LineageNode[]>> {
  const latest = new Map<string, LineageNode>();
  for (const n of nodes) if ((latest.get(n.vm)?.createdAt ?? '') < n.createdAt) latest.set(n.vm, n);
  const own = (await ctx.hosts.client(origin).call('snapshot.show', { id })).vm;
  const out = new Map<string, LineageNode[]>();
  for (const [vm, n] of latest) {
    if (!going.includes(n.id) || !(await alive(ctx, n))) continue;
    if (vm === own)
      throw new ConflictError(
        `snapshot ${id} was taken from VM ${vm}, which still runs on it (on its memory, or on its disk layers, as its later snapshots do); a cascade never destroys the VM a snapshot was taken from: destroy VM ${vm} first, then delete the snapshot`,
        { vms: [vm], snapshots: [] },
      );
    out.set(n.id, [...(out.get(n.id) ?? []), n]);
  }
  return out;
}

/** Whether the VM snapshot `n` was taken from is still on its host (a VM never moves). */
function alive(ctx: SchedContext, n: LineageNode): Promise<boolean> {
  return ctx.hosts
    .client(n.host)
    .call('vm.show', { id: n.vm })
    .then(
      () => true,
      (e: unknown) => (asForkyError(e).code === 'NOT_FOUND' ? false : Promise.reject(e)),
    );
}

/** Destroys the VM snapshot `n` was taken from; false if it was gone already. */
function destroyed(ctx: SchedContext, n: LineageNode): Promise<boolean> {
  return ctx.hosts
    .client(n.host)
    .call('vm.destroy', { id: n.vm })
    .then(
      () => true,
      (e: unknown) => (asForkyError(e).code === 'NOT_FOUND' ? false : Promise.reject(e)),
    );
}

/** Snapshots below `id` in the lineage, breadth first (parents before their children). */
export function descendants(nodes: readonly LineageNode[], id: string): string[] {
  const out: string[] = [];
  const queue = [id];
  while (queue.length > 0) {
    const at = queue.shift() as string;
    for (const n of nodes) {
      if (n.parent !== at || out.includes(n.id)) continue;
      out.push(n.id);
      queue.push(n.id);
    }
  }
  return out;
}
