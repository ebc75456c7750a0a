import type { Host } from '../host.js';

/**
 * Removes the by-id images (fetched for snapshots, or kept for VMs booted from a name) that no VM
 * or snapshot of this host refers to any more. Run when a snapshot or VM goes and after recovery;
 * a fetch in progress pins its image. Named images are never touched.
 */
export async function collectImages(host: Host): Promise<void> {
  // Asked per id under its lock, against the live maps: a fetch that records its snapshot while
  // collection runs keeps its image (a set made here first would miss it).
  const inUse = (id: string): boolean =>
    [...host.vms.values()].some((v) => v.imageId === id) || [...host.snaps.values()].some((s) => s.info.profile.imageId === id);
  const gone = await host.d.images.collect(inUse).catch((err: unknown) => {
    host.log.warn({ err }, 'by-id image collection failed');
    return [];
  });
  if (gone.length > 0) host.log.info({ images: gone }, 'removed by-id images nothing refers to');
}
