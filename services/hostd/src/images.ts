import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { ForkyError, KeyedMutex, NotFoundError, ValidationError, asForkyError, safeJoin } from '@forky/base';
import { ImageName } from '@forky/contract';
import { hexOf, imageOf, readManifest, type Image, type ManifestData } from './image-manifest.js';

export { Manifest, imageIdOf, type Image, type PartRef } from './image-manifest.js';

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
 * The images directory (by name, read-only) and, when `byIdDir` is given, images kept by id
 * (`<byIdDir>/<hex>/`, written here only, each atomically): fetched for snapshots, and every
 * named image a VM was booted from, so that a record's id resolves after the name is rebuilt.
 */
export class ImageCatalog {
  /** One install, keep or removal of an image id at a time. */
  readonly #mutex = new KeyedMutex();
  /** Ids being installed or put to use by a fetch, not yet referred to by any record: never collected. */
  readonly #pins = new Map<string, number>();
  /** Hexes an install or keep holds or waits for: collect passes them by rather than wait for a download. */
  readonly #busy = new Map<string, number>();

  constructor(
    readonly dir: string,
    readonly byIdDir?: string,
  ) {}

  /**
   * The named image, kept by id first: a VM booted from it records its id, and a rebuild gives the
   * name another id (its snapshots, and a restarted hostd's re-attach, look it up by that id).
   */
  async get(name: string): Promise<Image> {
    const { dir, m } = await this.#named(name);
    await this.#keep(dir, m);
    return imageOf(dir, m, 'named');
  }

  async #named(name: string): Promise<{ dir: string; m: ManifestData }> {
    const parsed = ImageName.safeParse(name);
    if (!parsed.success) throw new ValidationError(`invalid image name ${JSON.stringify(name)}`, { field: 'image' });
    const dir = safeJoin(this.dir, name);
    const m = await readManifest(dir);
    if (!m) throw new NotFoundError('image', name);
    return { dir, m };
  }

  /**
   * The image with this id: the named one (`nameHint`) if its id matches, else a by-id entry.
   * A snapshot's children run from the bytes it was made from, whatever the name means here now.
   */
  async byId(id: string, nameHint?: string): Promise<Image> {
    const hex = hexOf(id);
    if (nameHint !== undefined && ImageName.safeParse(nameHint).success) {
      const named = await this.#named(nameHint).catch(() => undefined);
      if (named?.m.id === id) return imageOf(named.dir, named.m, 'named');
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

  /** Under the id's lock, marked busy meanwhile (queued included). */
  async #locked<T>(hex: string, fn: () => Promise<T>): Promise<T> {
    this.#busy.set(hex, (this.#busy.get(hex) ?? 0) + 1);
    try {
      return await this.#mutex.run(hex, fn);
    } finally {
      const n = (this.#busy.get(hex) ?? 1) - 1;
      if (n > 0) this.#busy.set(hex, n);
      else this.#busy.delete(hex);
    }
  }

  /** Writes `fill` into a temporary directory renamed to `<byIdDir>/<hex>` (under the id's lock); a failure leaves nothing. */
  async #writeById(root: string, hex: string, fill: (tmp: string) => Promise<void>): Promise<void> {
    await fs.mkdir(root, { recursive: true });
    const tmp = safeJoin(root, `.tmp-${hex}-${randomBytes(4).toString('hex')}`);
    await fs.mkdir(tmp);
    try {
      await fill(tmp);
      // QEMU, as its own user, reads the kernel and initrd.
      await fs.chmod(tmp, 0o755);
      await fs.rm(safeJoin(root, hex), { recursive: true, force: true });
      await fs.rename(tmp, safeJoin(root, hex));
    } catch (e) {
      await fs.rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /** Keeps the named image in `dir` by its id too: hard links (a copy across filesystems). Done once per id. */
  async #keep(dir: string, m: ManifestData): Promise<void> {
    const root = this.byIdDir;
    if (!root) return;
    const hex = hexOf(m.id);
    await this.#locked(hex, async () => {
      if ((await readManifest(safeJoin(root, hex)).catch(() => undefined))?.id === m.id) return;
      await this.#writeById(root, hex, async (tmp) => {
        for (const p of [m.parts.kernel, m.parts.initrd, m.parts.disk]) await linkOrCopy(safeJoin(dir, p.file), safeJoin(tmp, p.file));
        await fs.writeFile(safeJoin(tmp, 'manifest.json'), JSON.stringify(m, null, 2));
      });
    }).catch((e: unknown) => {
      throw new ForkyError(asForkyError(e).code, `image ${m.name} (${m.id}) could not be kept by id: ${errText(e)}`, {
        cause: e,
        details: { field: 'image' },
      });
    });
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
    return this.#locked(hex, async () => {
      let moved = { kernel: { bytes: 0, moved: false }, initrd: { bytes: 0, moved: false } };
      if ((await readManifest(safeJoin(root, hex)).catch(() => undefined))?.id === b.id) return moved;
      await this.#writeById(root, hex, async (tmp) => {
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
        moved = { kernel: await get('kernel', 'vmlinuz'), initrd: await get('initrd', 'initrd.img') };
        // Same filesystem (the data dir): a link, not a second copy of the disk.
        await linkOrCopy(diskFile, safeJoin(tmp, 'disk.qcow2'));
        const m: ManifestData = {
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
      });
      return moved;
    });
  }

  /**
   * Removes the by-id images that `inUse` says no record refers to, that no fetch holds and that
   * are not what a name means now, and leftover temporary directories (a hostd that died
   * mid-install); named images are never touched. `inUse` is asked under the id's lock, just
   * before the removal, so a record kept meanwhile counts. An id an install or keep holds is
   * passed by, not waited for (a download may hold it for minutes). Says which went.
   */
  async collect(inUse: (id: string) => boolean): Promise<string[]> {
    const root = this.byIdDir;
    if (!root) return [];
    const gone: string[] = [];
    for (const n of await fs.readdir(root).catch(() => [] as string[])) {
      const id = `sha256:${n}`;
      if (/^[0-9a-f]{64}$/.test(n)) {
        if (this.#busy.has(n) || this.#pins.has(id)) continue;
        await this.#mutex.run(n, async () => {
          // A boot may be about to record this id: a name's current image stays kept.
          const named = await this.#namedIds();
          if (this.#pins.has(id) || inUse(id) || named.has(id)) return;
          await fs.rm(safeJoin(root, n), { recursive: true, force: true });
          gone.push(id);
        });
      } else if (/^\.tmp-[0-9a-f]{64}-[0-9a-f]+$/.test(n)) {
        const hex = n.slice(5, 69);
        // Busy: the install in progress renames or removes its own.
        if (this.#busy.has(hex)) continue;
        await this.#mutex.run(hex, () => fs.rm(safeJoin(root, n), { recursive: true, force: true }));
      }
    }
    return gone;
  }

  /** The ids the names of the images directory mean now. */
  async #namedIds(): Promise<Set<string>> {
    const ids = new Set<string>();
    for (const name of await this.list()) {
      const m = await readManifest(safeJoin(this.dir, name)).catch(() => undefined);
      if (m) ids.add(m.id);
    }
    return ids;
  }
}

export interface Moved {
  bytes: number;
  moved: boolean;
}

/** A hard link where both are on one filesystem; a copy otherwise. */
const linkOrCopy = (from: string, to: string): Promise<void> => fs.link(from, to).catch(() => fs.copyFile(from, to));

const exists = (p: string): Promise<boolean> =>
  fs.stat(p).then(
    () => true,
    () => false,
  );

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
