import fs from 'node:fs/promises';
import path from 'node:path';
import type { Layout } from '../../layout.js';
import type { RecordStore } from '../../domain/ports.js';
import { recordForDisk, type SnapshotRecord, type VmRecord } from '../../domain/records.js';

let tmpSeq = 0;

/**
 * Writes JSON via a temporary name, so a crash leaves the old file or the new one. The name is
 * this write's own: two writes of one file at once (a destroy and a settling child) each rename
 * a whole file, the later one wins, neither fails.
 */
export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${++tmpSeq}.tmp`;
  try {
    await fs.writeFile(tmp, JSON.stringify(value, null, 2));
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/** Records as JSON files under the data directory (vms/<id>/vm.json, snapshots/<id>/snapshot.json, requests/<key>.json). */
export class FileRecordStore implements RecordStore {
  constructor(private readonly layout: Layout) {}

  saveVm(rec: VmRecord): Promise<void> {
    return writeJsonAtomic(this.layout.vmRecord(rec.id), recordForDisk(rec));
  }

  saveSnapshot(rec: SnapshotRecord): Promise<void> {
    return writeJsonAtomic(path.join(this.layout.snapshotDir(rec.info.id), 'snapshot.json'), rec);
  }

  saveRequest(key: string, op: string, result: unknown): Promise<void> {
    return writeJsonAtomic(this.layout.requestRecord(key), { op, result });
  }

  async forgetRequest(key: string): Promise<void> {
    await fs.rm(this.layout.requestRecord(key), { force: true });
  }

  async removeVm(vm: Pick<VmRecord, 'id' | 'ram'>): Promise<void> {
    if (vm.ram.shared) await fs.rm(vm.ram.file, { force: true });
    await fs.rm(this.layout.vmDir(vm.id), { recursive: true, force: true });
  }

  async removeRuntime(vm: Pick<VmRecord, 'id' | 'ram'>): Promise<void> {
    if (vm.ram.shared) await fs.rm(vm.ram.file, { force: true });
    const dir = this.layout.vmDir(vm.id);
    for (const f of await fs.readdir(dir).catch(() => [] as string[])) {
      if (f.endsWith('.sock')) await fs.rm(path.join(dir, f), { force: true });
    }
  }

  async loadAll(): Promise<{ vms: VmRecord[]; snaps: SnapshotRecord[]; requests: Array<{ key: string; op: string; result: unknown }> }> {
    const requests = await readJsonDir<{ op: string; result: unknown }>(this.layout.requestsDir());
    const snaps = await readJsonDir<SnapshotRecord>(this.layout.snapshotsDir(), 'snapshot.json');
    const vms = await readJsonDir<VmRecord>(this.layout.vmsDir(), 'vm.json');
    return { vms: vms.map((v) => v.value), snaps: snaps.map((s) => s.value), requests: requests.map((r) => ({ key: r.name, ...r.value })) };
  }

  async sweep(keep: { vms: ReadonlySet<string>; snaps: ReadonlySet<string>; rams: ReadonlySet<string> }): Promise<number> {
    let n = (await removeStray(this.layout.vmsDir(), keep.vms)) + (await removeStray(this.layout.snapshotsDir(), keep.snaps));
    for (const dir of [this.layout.vmRamDir(), this.layout.snapshotRamDir()]) {
      for (const f of await fs.readdir(dir).catch(() => [] as string[])) {
        if (keep.rams.has(path.join(dir, f))) continue;
        await fs.rm(path.join(dir, f), { force: true });
        n++;
      }
    }
    return n;
  }

  exists(file: string): Promise<boolean> {
    return fs.access(file).then(
      () => true,
      () => false,
    );
  }
}

/** Removes entries of `dir` whose name is not in `keep`. */
async function removeStray(dir: string, keep: ReadonlySet<string>): Promise<number> {
  let n = 0;
  for (const e of await fs.readdir(dir).catch(() => [] as string[])) {
    if (keep.has(e)) continue;
    await fs.rm(path.join(dir, e), { recursive: true, force: true });
    n++;
  }
  return n;
}

/** `dir/<name>/<file>` (or `dir/<name>.json` without `file`), parsed; unreadable ones are skipped. */
async function readJsonDir<T>(dir: string, file?: string): Promise<Array<{ name: string; value: T }>> {
  const out: Array<{ name: string; value: T }> = [];
  for (const e of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!file && !e.endsWith('.json')) continue;
    const p = file ? path.join(dir, e, file) : path.join(dir, e);
    try {
      out.push({ name: file ? e : e.slice(0, -'.json'.length), value: JSON.parse(await fs.readFile(p, 'utf8')) as T });
    } catch {
      // Half-written or missing: what it described is cleaned up as stray.
    }
  }
  return out;
}
