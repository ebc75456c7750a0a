import fs from 'node:fs/promises';
import { z } from 'zod';
import { NotFoundError, ValidationError, safeJoin } from '@forky/base';
import { ImageName } from '@forky/contract';

const Part = z.strictObject({ file: z.string().regex(/^[a-z0-9._-]+$/), sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number() });

/** The manifest written by images/tiny/build.sh or images/build-recipe.sh (a recipe image also records its recipe). */
const Manifest = z.strictObject({
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
}

/** Read-only view of the images directory. */
export class ImageCatalog {
  constructor(readonly dir: string) {}

  async get(name: string): Promise<Image> {
    const parsed = ImageName.safeParse(name);
    if (!parsed.success) throw new ValidationError(`invalid image name ${JSON.stringify(name)}`, { field: 'image' });
    const dir = safeJoin(this.dir, name);
    let raw: string;
    try {
      raw = await fs.readFile(safeJoin(dir, 'manifest.json'), 'utf8');
    } catch {
      throw new NotFoundError('image', name);
    }
    const m = Manifest.parse(JSON.parse(raw));
    return {
      name: m.name,
      id: m.id,
      diskSha256: m.parts.disk.sha256,
      cmdline: m.cmdline,
      kernel: safeJoin(dir, m.parts.kernel.file),
      initrd: safeJoin(dir, m.parts.initrd.file),
      disk: safeJoin(dir, m.parts.disk.file),
      diskVirtualSize: m.parts.disk.virtualSize,
    };
  }

  async list(): Promise<string[]> {
    const entries = await fs.readdir(this.dir, { withFileTypes: true }).catch(() => []);
    const names: string[] = [];
    for (const e of entries) {
      if (!e.isDirectory() || !ImageName.safeParse(e.name).success) continue;
      if (
        await fs.stat(safeJoin(this.dir, e.name, 'manifest.json')).then(
          () => true,
          () => false,
        )
      )
        names.push(e.name);
    }
    return names.sort();
  }
}
