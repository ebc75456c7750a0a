import type { Host } from '../host.js';

/**
 * Removes the by-id images (fetched for snapshots) that no VM or snapshot of this host refers to
 * any more. Run when a snapshot or VM goes and after recovery; a fetch in progress pins its image.
 * Named images are never touched.
 */
export async function collectImages(host: Host): Promise<void> {
  const used = new Set<string>();
  for (const v of host.vms.values()) used.add(v.imageId);
  for (const s of host.snaps.values()) used.add(s.info.profile.imageId);
  const gone = await host.d.images.collect(used).catch((err: unknown) => {
    host.log.warn({ err }, 'by-id image collection failed');
    return [];
  });
  if (gone.length > 0) host.log.info({ images: gone }, 'removed by-id images nothing refers to');
}
