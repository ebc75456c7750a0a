import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { isNoSpace } from '@forky/base';
import type { SnapshotFiles, SnapshotStore } from '../../domain/ports.js';
import { ramDirFull } from '../ram-space.js';
import type { Layout } from '../../layout.js';

/**
 * Snapshots on this host: device state in the data directory, frozen RAM in the RAM directory
 * (tmpfs), where children map it copy-on-write. A snapshot's RAM is either the VM's own RAM file,
 * taken over by rename (no copy at all), or a copy of the frozen file the VM was mapping, completed
 * with the pages the VM made its own.
 */
export class LocalSnapshotStore implements SnapshotStore {
  constructor(private readonly layout: Layout) {}

  files(id: string): SnapshotFiles {
    return { state: path.join(this.layout.snapshotDir(id), 'state.bin'), ram: this.layout.snapshotRam(id) };
  }

  async beginRam(id: string, base: string): Promise<string> {
    const { ram } = await this.#dirs(id);
    try {
      // The base is frozen, so this copy runs while the VM does; holes stay holes.
      await execa('cp', ['--sparse=always', base, ram]);
    } catch (e) {
      // Nothing of a copy that did not fit stays behind (the engine undoes only what began).
      await this.remove(id);
      if (isNoSpace(e)) throw ramDirFull(`snapshot ${id}'s copy of ${base}`, ram, e);
      throw e;
    }
    await fs.chmod(ram, 0o600);
    return ram;
  }

  async adoptRam(id: string, file: string): Promise<void> {
    // The VM keeps writing through its mapping until it is stopped; the name is all that moves.
    await fs.rename(file, (await this.#dirs(id)).ram);
  }

  async returnRam(id: string, file: string): Promise<void> {
    await fs.rename(this.files(id).ram, file);
  }

  async commitRam(id: string): Promise<{ ramBytes: number }> {
    const { ram } = this.files(id);
    await fs.chmod(ram, 0o400);
    const st = await fs.stat(ram);
    return { ramBytes: st.blocks * 512 };
  }

  async present(id: string): Promise<{ state: boolean; ram: boolean }> {
    const there = (f: string): Promise<boolean> =>
      fs.stat(f).then(
        () => true,
        () => false,
      );
    const f = this.files(id);
    return { state: await there(f.state), ram: await there(f.ram) };
  }

  async remove(id: string): Promise<void> {
    const files = this.files(id);
    await fs.rm(path.dirname(files.state), { recursive: true, force: true });
    await fs.rm(files.ram, { force: true });
  }

  async #dirs(id: string): Promise<SnapshotFiles> {
    const files = this.files(id);
    await fs.mkdir(path.dirname(files.state), { recursive: true });
    await fs.mkdir(path.dirname(files.ram), { recursive: true });
    return files;
  }
}
