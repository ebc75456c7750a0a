import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { SnapshotFiles, SnapshotStore } from '../../domain/ports.js';
import type { Layout } from '../../layout.js';

/**
 * Snapshots on this host: device state in the data directory, frozen RAM in the RAM directory
 * (tmpfs), where children map it copy-on-write.
 */
export class LocalSnapshotStore implements SnapshotStore {
  constructor(private readonly layout: Layout) {}

  files(id: string): SnapshotFiles {
    return { state: path.join(this.layout.snapshotDir(id), 'state.bin'), ram: this.layout.snapshotRam(id) };
  }

  scratch(id: string): string {
    return this.files(id).state;
  }

  async create(id: string, stateFile: string, ramFile: string): Promise<{ ramBytes: number }> {
    const files = this.files(id);
    await fs.mkdir(path.dirname(files.state), { recursive: true });
    await fs.mkdir(path.dirname(files.ram), { recursive: true });
    if (stateFile !== files.state) await fs.rename(stateFile, files.state);
    const tmp = `${files.ram}.partial`;
    try {
      // A private copy: the VM may run again, and the children's memory must never change under them.
      // --sparse=always also drops pages the guest never touched or zeroed.
      await execa('cp', ['--sparse=always', ramFile, tmp]);
      await fs.chmod(tmp, 0o400);
      await fs.rename(tmp, files.ram);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
    const st = await fs.stat(files.ram);
    return { ramBytes: st.blocks * 512 };
  }

  async remove(id: string): Promise<void> {
    const files = this.files(id);
    await fs.rm(path.dirname(files.state), { recursive: true, force: true });
    await fs.rm(files.ram, { force: true });
  }
}
