import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { z } from 'zod';
import { ForkyError, KeyedMutex, NotFoundError, ValidationError, asForkyError, safeJoin } from '@forky/base';
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
  /** `named`: from the images directory; `by-id`: fetched for a snapshot into the host's data dir. */
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

/** What a host needs to install an image it lacks (a snapshot's manifest carries it; see shipping.ts). */
export interface ImageBlock {
  name: string;
  id: string;
  cmdline: string;
  kernelVersion?: string | undefined;
  kernel: { digest: string; size: number };
  initrd: { digest: string; size: number };
  disk: { digest: string; size: number };
  diskVirtualSize: number;
}

/** Putting an image's parts in place failed: the by-id store is left as it was. */
export class ImageFetchError extends ForkyError {
  override readonly name = 'ImageFetchError';
  constructor(message: string, field: string, cause: unknown) {
    super(asForkyError(cause).code, message, { cause, details: { field } });
  }
}

/**
 * The images directory (by name, read-only) and, when `byIdDir` is given, the images this host
 * fetched for snapshots, by id (`<byIdDir>/<hex>/`, written here only, each atomically).
 */
export class ImageCatalog {
  /** One install or removal of an image id at a time. */
  readonly #mutex = new KeyedMutex();
  /** Ids being installed or put to use by a fetch, not yet referred to by any record: never collected. */
  readonly #pins = new Map<string, number>();

  constructor(
    readonly dir: string,
    readonly byIdDir?: string,
  ) {}

  async get(name: string): Promise<Image> {
    const parsed = ImageName.safeParse(name);
    if (!parsed.success) throw new ValidationError(`invalid image name ${JSON.stringify(name)}`, { field: 'image' });
    const dir = safeJoin(this.dir, name);
    const m = await readManifest(dir);
    if (!m) throw new NotFoundError('image', name);
    return imageOf(dir, m, 'named');
  }

  /**
   * The image with this id: the named one (`nameHint`) if its id matches, else a by-id entry.
   * A snapshot's children run from the bytes it was made from, whatever the name means here now.
   */
  async byId(id: string, nameHint?: string): Promise<Image> {
    const hex = hexOf(id);
    if (nameHint !== undefined && ImageName.safeParse(nameHint).success) {
      const named = await this.get(nameHint).catch(() => undefined);
      if (named?.id === id) return named;
    }
    if (this.byIdDir) {
      const dir = safeJoin(this.byIdDir, hex);
      // One we wrote, so one that does not parse is a leftover: as good as none (a fetch replaces it).
      const m = await readManifest(dir).catch(() => undefined);
      if (m?.id === id) return imageOf(dir, m, 'by-id');
    }
    throw new NotFoundError('image', id);
  }

  async list(): Promise<string[]> {
    const entries = await fs.readdir(this.dir, { withFileTypes: true }).catch(() => []);
    const names: string[] = [];
    for (const e of entries) {
      if (!e.isDirectory() || !ImageName.safeParse(e.name).success) continue;
      if (await exists(safeJoin(this.dir, e.name, 'manifest.json'))) names.push(e.name);
    }
    return names.sort();
  }

  /** Ids of the by-id images (complete ones: a leftover temporary directory is not one). */
  async listById(): Promise<string[]> {
    if (!this.byIdDir) return [];
    const names = await fs.readdir(this.byIdDir).catch(() => [] as string[]);
    return names.filter((n) => /^[0-9a-f]{64}$/.test(n)).map((n) => `sha256:${n}`);
  }

  /** Keeps `id` from collection until the returned function is called (a fetch until its record is kept). */
  pin(id: string): () => void {
    this.#pins.set(id, (this.#pins.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#pins.get(id) ?? 1) - 1;
      if (n > 0) this.#pins.set(id, n);
      else this.#pins.delete(id);
    };
  }

  /**
   * Installs a by-id image from its parts: kernel and initrd fetched by `download` (which verifies
   * their digests), the disk a hard link of `diskFile` (the base layer, already verified). Written
   * into a temporary directory renamed into place, under the id's lock: two fetches of one image
   * at once install it once. Says which parts moved.
   */
  async install(
    b: ImageBlock,
    diskFile: string,
    download: (digest: string, dest: string) => Promise<{ receivedBytes: number }>,
  ): Promise<{ kernel: Moved; initrd: Moved }> {
    const root = this.byIdDir;
    if (!root) throw new ForkyError('UNAVAILABLE', 'this host keeps no images by id');
    const hex = hexOf(b.id);
    return this.#mutex.run(hex, async () => {
      const still: Moved = { bytes: 0, moved: false };
      const dest = safeJoin(root, hex);
      if ((await readManifest(dest).catch(() => undefined))?.id === b.id) return { kernel: still, initrd: still };
      await fs.mkdir(root, { recursive: true });
      const tmp = safeJoin(root, `.tmp-${hex}-${randomBytes(4).toString('hex')}`);
      await fs.mkdir(tmp);
      try {
        const get = async (field: 'kernel' | 'initrd', file: string): Promise<Moved> => {
          const part = b[field];
          const at = safeJoin(tmp, file);
          const r = await download(part.digest, at).catch((e: unknown) => {
            throw new ImageFetchError(
              `image ${b.id}: its ${field} (part ${part.digest}) could not be fetched: ${errText(e)}`,
              `image.${field}`,
              e,
            );
          });
          const size = (await fs.stat(at)).size;
          if (size !== part.size)
            throw new ImageFetchError(
              `image ${b.id}: its ${field} has ${size} bytes, the manifest says ${part.size}`,
              `image.${field}.size`,
              undefined,
            );
          return { bytes: r.receivedBytes, moved: true };
        };
        const kernel = await get('kernel', 'vmlinuz');
        const initrd = await get('initrd', 'initrd.img');
        // Same filesystem (the data dir): a link, not a second copy of the disk.
        await fs.link(diskFile, safeJoin(tmp, 'disk.qcow2')).catch(() => fs.copyFile(diskFile, safeJoin(tmp, 'disk.qcow2')));
        const m: z.infer<typeof Manifest> = {
          schema: 'forky.image/v1',
          name: b.name,
          id: b.id,
          cmdline: b.cmdline,
          kernelVersion: b.kernelVersion ?? 'unknown',
          parts: {
            kernel: { file: 'vmlinuz', sha256: b.kernel.digest, size: b.kernel.size },
            initrd: { file: 'initrd.img', sha256: b.initrd.digest, size: b.initrd.size },
            disk: { file: 'disk.qcow2', sha256: b.disk.digest, size: b.disk.size, virtualSize: b.diskVirtualSize },
          },
        };
        await fs.writeFile(safeJoin(tmp, 'manifest.json'), JSON.stringify(m, null, 2));
        // QEMU, as its own user, reads the kernel and initrd.
        await fs.chmod(tmp, 0o755);
        await fs.rm(dest, { recursive: true, force: true });
        await fs.rename(tmp, dest);
        return { kernel, initrd };
      } catch (e) {
        await fs.rm(tmp, { recursive: true, force: true });
        throw e;
      }
    });
  }

  /**
   * Removes the by-id images none of `used` names and no fetch holds, and leftover temporary
   * directories (a hostd that died mid-install); named images are never touched. Says which went.
   */
  async collect(used: ReadonlySet<string>): Promise<string[]> {
    const root = this.byIdDir;
    if (!root) return [];
    const gone: string[] = [];
    for (const n of await fs.readdir(root).catch(() => [] as string[])) {
      const id = `sha256:${n}`;
      if (/^[0-9a-f]{64}$/.test(n)) {
        if (used.has(id) || this.#pins.has(id)) continue;
        await this.#mutex.run(n, async () => {
          if (this.#pins.has(id)) return;
          await fs.rm(safeJoin(root, n), { recursive: true, force: true });
          gone.push(id);
        });
      } else if (/^\.tmp-[0-9a-f]{64}-[0-9a-f]+$/.test(n)) {
        // Under the id's lock: an install in progress has renamed or removed its own by then.
        await this.#mutex.run(n.slice(5, 69), () => fs.rm(safeJoin(root, n), { recursive: true, force: true }));
      }
    }
    return gone;
  }
}

export interface Moved {
  bytes: number;
  moved: boolean;
}

/** The hex of a validated image id: the only thing a by-id path is built from. */
function hexOf(id: string): string {
  if (!ImageId.safeParse(id).success) throw new ValidationError(`invalid image id ${JSON.stringify(id)}`, { field: 'imageId' });
  return id.slice('sha256:'.length);
}

/** A directory's manifest, or undefined when it has none; one that does not parse is an error. */
async function readManifest(dir: string): Promise<z.infer<typeof Manifest> | undefined> {
  let raw: string;
  try {
    raw = await fs.readFile(safeJoin(dir, 'manifest.json'), 'utf8');
  } catch {
    return undefined;
  }
  return Manifest.parse(JSON.parse(raw));
}

function imageOf(dir: string, m: z.infer<typeof Manifest>, stored: Image['stored']): Image {
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

const exists = (p: string): Promise<boolean> =>
  fs.stat(p).then(
    () => true,
    () => false,
  );

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
