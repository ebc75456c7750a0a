import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Image } from '../../images.js';
import type { LayerStore } from '../../domain/ports.js';
import type { Layout } from '../../layout.js';
import { writeOverlay } from './qcow2-overlay.js';

/**
 * qcow2 layers in one directory. Backing references are bare file names, relative to the
 * directory, so a chain stays valid wherever the directory is (and when it is shipped).
 */
export class QcowLayerStore implements LayerStore {
  constructor(
    protected readonly layout: Layout,
    private readonly qemuImg = 'qemu-img',
  ) {}

  async importImage(image: Image): Promise<string> {
    const id = `img-${image.diskSha256.slice(0, 32)}`;
    const dest = this.layout.layer(id);
    if (await exists(dest)) return id;
    await fs.mkdir(this.layout.layersDir(), { recursive: true });
    const tmp = `${dest}.${process.pid}.tmp`;
    // A hard link when the images live on the same filesystem; a copy otherwise.
    await fs.link(image.disk, tmp).catch(() => fs.copyFile(image.disk, tmp));
    await fs.rename(tmp, dest);
    return id;
  }

  async createOverlay(id: string, backing: string, virtualSize: number): Promise<void> {
    await fs.mkdir(this.layout.layersDir(), { recursive: true });
    const file = this.layout.layer(id);
    const name = path.basename(this.layout.layer(backing));
    // No process for the usual size (one per child of a fork); qemu-img beyond what is checked against it.
    if (await writeOverlay(file, name, virtualSize)) return;
    // -u: no need to open the whole chain; the size is given.
    await execa(this.qemuImg, ['create', '-q', '-u', '-f', 'qcow2', '-b', name, '-F', 'qcow2', file, String(virtualSize)]);
  }

  async freeze(layer: string): Promise<void> {
    await fs.chmod(this.layout.layer(layer), 0o444);
  }

  path(layer: string): string {
    return this.layout.layer(layer);
  }

  async bytes(layer: string): Promise<number> {
    return (await fs.stat(this.layout.layer(layer))).size;
  }

  async remove(layer: string): Promise<void> {
    await fs.rm(this.layout.layer(layer), { force: true });
  }

  async list(): Promise<string[]> {
    const names = await fs.readdir(this.layout.layersDir()).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.qcow2')).map((n) => n.slice(0, -'.qcow2'.length));
  }
}

const exists = (p: string): Promise<boolean> =>
  fs.stat(p).then(
    () => true,
    () => false,
  );
