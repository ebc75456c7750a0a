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
 * the lineage go first, leaves first, each with the VMs that depend on it.
 */
export async function deleteSnapshot(ctx: SchedContext, id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
  await ctx.locate('snap', id);
  // Without cascade, each host refuses for what physically depends on the snapshot there.
  const below = cascade ? descendants((await tree(ctx)).nodes, id) : [];
  const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
  for (const s of [...below.reverse(), id]) {
    const home = await ctx.locate('snap', s).catch(() => undefined);
    if (!home) continue;
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
