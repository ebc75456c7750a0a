import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { z } from 'zod';
import { ValidationError, safeJoin } from '@forky/base';
import { ImageName } from '@forky/contract';

const Part = z.strictObject({ file: z.string().regex(/^[a-z0-9._-]+$/), sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number() });

/** The manifest written by images/tiny/build.sh or images/build-recipe.sh (a recipe image also records its recipe). */
export const Manifest = z.strictObject({
  schema: z.literal('forky.image/v1'),
  name: ImageName,
  id: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  /** Over the build's inputs: a build with the same key is skipped. */
  inputKey: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  arch: z.literal('x86_64').optional(),
  cmdline: z.string(),
  kernelVersion: z.string(),
  /** Debian package -> version, as built. */
  packages: z.record(z.string(), z.string()).optional(),
  /** images/<name>/image.json as it was built (format: images/README.md). */
  recipe: z.record(z.string(), z.unknown()).optional(),
  /** An imported image's tarball (images/import-image.sh): its format and sha256. */
  source: z.strictObject({ format: z.enum(['oci', 'docker', 'rootfs']), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).optional(),
  parts: z.strictObject({ kernel: Part, initrd: Part, disk: Part.extend({ virtualSize: z.number().int().positive() }).strict() }),
});
export type ManifestData = z.infer<typeof Manifest>;

export interface Image {
  name: string;
  id: string;
  /** sha256 of the disk part: the content address of its base layer. */
  diskSha256: string;
  cmdline: string;
  kernel: string;
  initrd: string;
  disk: string;
  diskVirtualSize: number;
  kernelVersion: string;
  /** Digests and sizes of the kernel and initrd, as the manifest records them (what a publish uploads). */
  parts: { kernel: PartRef; initrd: PartRef; disk: PartRef };
  /** `named`: from the images directory; `by-id`: kept by id in the host's data dir (fetched, or a named one a VM was booted from). */
  stored: 'named' | 'by-id';
}
export interface PartRef {
  sha256: string;
  size: number;
}

const ImageId = z.string().regex(/^sha256:[0-9a-f]{64}$/);

/** The image id as images/build-recipe.sh and images/tiny/build.sh compute it: over the parts and the command line. */
export function imageIdOf(p: { kernel: string; initrd: string; disk: string; cmdline: string }): string {
  const h = createHash('sha256').update(`kernel:${p.kernel}\ninitrd:${p.initrd}\ndisk:${p.disk}\ncmdline:${p.cmdline}\n`);
  return `sha256:${h.digest('hex')}`;
}

/** The hex of a validated image id: the only thing a by-id path is built from. */
export function hexOf(id: string): string {
  if (!ImageId.safeParse(id).success) throw new ValidationError(`invalid image id ${JSON.stringify(id)}`, { field: 'imageId' });
  return id.slice('sha256:'.length);
}

/** A directory's manifest, or undefined when it has none; one that does not parse is an error. */
export async function readManifest(dir: string): Promise<ManifestData | undefined> {
  let raw: string;
  try {
    raw = await fs.readFile(safeJoin(dir, 'manifest.json'), 'utf8');
  } catch {
    return undefined;
  }
  return Manifest.parse(JSON.parse(raw));
}

export function imageOf(dir: string, m: ManifestData, stored: Image['stored']): Image {
  const ref = (p: { sha256: string; size: number }): PartRef => ({ sha256: p.sha256, size: p.size });
  return {
    name: m.name,
    id: m.id,
    diskSha256: m.parts.disk.sha256,
    cmdline: m.cmdline,
    kernel: safeJoin(dir, m.parts.kernel.file),
    initrd: safeJoin(dir, m.parts.initrd.file),
    disk: safeJoin(dir, m.parts.disk.file),
    diskVirtualSize: m.parts.disk.virtualSize,
    kernelVersion: m.kernelVersion,
    parts: { kernel: ref(m.parts.kernel), initrd: ref(m.parts.initrd), disk: ref(m.parts.disk) },
    stored,
  };
}
