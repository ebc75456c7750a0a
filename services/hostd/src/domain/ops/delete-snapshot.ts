import { ConflictError } from '@forky/base';
import type { SnapshotDeleteResult } from '@forky/contract';
import type { Host } from '../host.js';
import type { SnapshotRecord } from '../records.js';
import { collectImages } from './images.js';
import { destroyVm } from './lifecycle.js';

/** A part younger than this is never swept: its manifest may be on its way. */
const PART_GRACE_MS = 10 * 60_000;

/**
 * Deletes a snapshot. Refused while a VM runs on its memory or disk, or another snapshot's disk
 * chain runs through it; with `cascade` those go first (on this host; the scheduler walks the
 * lineage across hosts), except the VM the snapshot was taken from: a cascade that would destroy
 * it is refused whole, before anything goes.
 */
export function deleteSnapshot(
  host: Host,
  id: string,
  cascade: boolean,
  /** Retention's: whether the snapshot is still due to expire, checked under its lock (CONFLICT if not). */
  due?: (s: SnapshotRecord) => boolean,
): Promise<SnapshotDeleteResult> {
  host.snap(id);
  return host.lock.run(id, () => {
    if (due && !due(host.snap(id)))
      throw new ConflictError(`snapshot ${id} was taken up again before it expired`, { vms: [], snapshots: [] });
    return deleteLocked(host, id, cascade, true);
  });
}

/** `top`: the snapshot asked for, not one that goes with it (whose own source VM is a child of the one asked for). */
async function deleteLocked(host: Host, id: string, cascade: boolean, top: boolean): Promise<SnapshotDeleteResult> {
  const { d } = host;
  const s = host.snap(id);
  const { vms, snapshots } = dependents(host, s);
  const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
  if ((host.snapUsers.get(id) ?? 0) > 0)
    throw new ConflictError(`snapshot ${id} is in use by a fork in progress`, { vms: [], snapshots: [] });
  if (vms.length + snapshots.length > 0) {
    const source = top ? sourceGoing(host, s) : undefined;
    if (!cascade) {
      throw new ConflictError(
        `snapshot ${id} is in use by ${[...vms, ...snapshots].join(', ')} (VMs forked from it or running on its memory since it was taken, snapshots below it); destroy those first${source ? '' : ' or delete with cascade'}`,
        { vms, snapshots },
      );
    }
    if (source) {
      // Its successor maps the snapshot's RAM, its disk sits on the snapshot's frozen layer, and its
      // later snapshots need that chain: no private copy short of a new process and a full disk copy.
      throw new ConflictError(
        `snapshot ${id} was taken from VM ${source}, which still runs on it (on its memory, or on its disk layers, as its later snapshots do); a cascade never destroys the VM a snapshot was taken from: destroy VM ${source} first, then delete the snapshot`,
        { vms: [source], snapshots: [] },
      );
    }
    const ram = d.snapshots.files(id).ram;
    for (const vm of vms) {
      await destroyVm(host, vm, { ramGoing: ram });
      out.vms.push(vm);
    }
    for (const child of snapshots) {
      if (!host.snaps.has(child)) continue;
      const r = await host.lock.run(child, () => deleteLocked(host, child, true, false));
      out.vms.push(...r.vms);
      out.snapshots.push(...r.snapshots);
    }
  }
  await host.pool.drop(id);
  host.snaps.delete(id);
  await d.snapshots.remove(id);
  if (!s.origin) {
    // The origin retires the published manifest and the lineage entry; parts only it referred to are collected.
    await host.dir.unregister('snap', id).catch((err: unknown) => host.log.warn({ err, snapshot: id }, 'locator delete failed'));
    await host.dir.forgetLineage(id).catch((err: unknown) => host.log.warn({ err, snapshot: id }, 'lineage delete failed'));
    if (d.parts) {
      await d.parts.deleteManifest(id).catch(() => undefined);
      const swept = await d.parts.sweep(PART_GRACE_MS).catch((err: unknown) => host.log.warn({ err }, 'part sweep failed'));
      if (swept) host.log.info({ snapshot: id, ...swept }, 'object store swept');
    }
  }
  await collectImages(host);
  out.snapshots.push(id);
  return out;
}

/**
 * What on this host depends on snapshot `s`: VMs on its RAM or disk layer, snapshots whose disk
 * chain runs through its layer. A snapshot below it in the lineage alone does not: its RAM is
 * its own, and the tree shows it with its parent gone.
 */
export function dependents(host: Host, s: SnapshotRecord): { vms: string[]; snapshots: string[] } {
  const frozen = s.chain.at(-1) as string;
  const ram = host.d.snapshots.files(s.info.id).ram;
  const vms = [...host.vms.values()].filter((v) => v.chain.includes(frozen) || v.ram.file === ram).map((v) => v.id);
  const snapshots = [...host.snaps.values()].filter((o) => o !== s && o.chain.includes(frozen)).map((o) => o.info.id);
  return { vms, snapshots };
}

/**
 * The VM `s` was taken from, when a cascade of `s` would destroy it: it depends on `s`, or on a
 * snapshot that goes with `s` (its later snapshots, whose chains run through it).
 */
function sourceGoing(host: Host, s: SnapshotRecord): string | undefined {
  const source = s.info.vm;
  if (!host.vms.has(source)) return undefined;
  const seen = new Set([s.info.id]);
  for (const queue = [s]; queue.length > 0;) {
    const { vms, snapshots } = dependents(host, queue.shift() as SnapshotRecord);
    if (vms.includes(source)) return source;
    for (const id of snapshots) {
      const next = host.snaps.get(id);
      if (next && !seen.has(id)) queue.push(next);
      seen.add(id);
    }
  }
  return undefined;
}
