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
 * lineage across hosts).
 */
export function deleteSnapshot(host: Host, id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
  host.snap(id);
  return host.lock.run(id, () => deleteLocked(host, id, cascade));
}

async function deleteLocked(host: Host, id: string, cascade: boolean): Promise<SnapshotDeleteResult> {
  const { d } = host;
  const s = host.snap(id);
  const { vms, snapshots } = dependents(host, s);
  const out: SnapshotDeleteResult = { snapshots: [], vms: [] };
  if ((host.snapUsers.get(id) ?? 0) > 0)
    throw new ConflictError(`snapshot ${id} is in use by a fork in progress`, { vms: [], snapshots: [] });
  if (vms.length + snapshots.length > 0) {
    if (!cascade) {
      throw new ConflictError(
        `snapshot ${id} is in use by ${[...vms, ...snapshots].join(', ')} (VMs forked from it or running on its memory since it was taken, snapshots below it); destroy those first or delete with cascade`,
        { vms, snapshots },
      );
    }
    const ram = d.snapshots.files(id).ram;
    for (const vm of vms) {
      await destroyVm(host, vm, { ramGoing: ram });
      out.vms.push(vm);
    }
    for (const child of snapshots) {
      if (!host.snaps.has(child)) continue;
      const r = await host.lock.run(child, () => deleteLocked(host, child, true));
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
function dependents(host: Host, s: SnapshotRecord): { vms: string[]; snapshots: string[] } {
  const frozen = s.chain.at(-1) as string;
  const ram = host.d.snapshots.files(s.info.id).ram;
  const vms = [...host.vms.values()].filter((v) => v.chain.includes(frozen) || v.ram.file === ram).map((v) => v.id);
  const snapshots = [...host.snaps.values()].filter((o) => o !== s && o.chain.includes(frozen)).map((o) => o.info.id);
  return { vms, snapshots };
}
