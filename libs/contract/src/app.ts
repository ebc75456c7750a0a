import { z } from 'zod';

/**
 * App layers: a host directory packed into a read-only ext4 image, addressed by the image's
 * sha256 (the object store's part address). The guest mounts it under an overlay whose upper
 * half lives on the VM's own disk, so children of one fork share the bytes and keep their writes.
 */
export const LayerDigest = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 digest (64 hex digits)');
export type LayerDigest = z.infer<typeof LayerDigest>;

/** App disks one VM may hold at once (each a PCI slot of its own). */
export const MAX_APPS = 4;

/** Guest directories an app may not cover: the system, and where the overlay keeps its upper half. */
const RESERVED = ['/proc', '/sys', '/dev', '/run', '/data', '/etc', '/bin', '/sbin', '/usr', '/lib', '/lib64', '/init'];

export const MountPoint = z
  .string()
  .max(200)
  .regex(/^(\/[A-Za-z0-9._-]+)+$/, 'must be an absolute path of letters, digits, ".", "_" and "-"')
  .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), 'may not contain "." or ".." segments')
  .refine((p) => !RESERVED.some((r) => p === r || p.startsWith(`${r}/`)), `may not be or be under ${RESERVED.join(', ')}`);

export const AppMount = z.strictObject({
  /** The packed directory's image, already in the object store (`forky` uploads it). */
  layer: LayerDigest,
  /** Where the guest sees it. */
  mount: MountPoint,
});
export type AppMount = z.infer<typeof AppMount>;

export const AppList = z
  .array(AppMount)
  .max(MAX_APPS)
  .refine((a) => new Set(a.map((x) => x.mount)).size === a.length, 'each mount point at most once');
