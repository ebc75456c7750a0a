import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, ValidationError } from '@forky/base';
import { ObjectPartStore, resolveReplicas } from '@forky/bus';
import { MountPoint, type AppMount } from '@forky/contract';

const MiB = 1 << 20;
/** Fixed ids and clock: the same directory packs into the same bytes, so into the same layer. */
const FS_UUID = '6f726b79-7069-6700-0000-0000000000a1';
const HASH_SEED = '6f726b79-7069-6700-0000-0000000000a2';

/** `DIR[:/mountpoint]`, the form `--app` takes; the mount point defaults to /app. */
export function parseAppSpec(spec: string): { dir: string; mount: string } {
  const i = spec.lastIndexOf(':');
  const [dir, mount] = i > 0 && spec[i + 1] === '/' ? [spec.slice(0, i), spec.slice(i + 1)] : [spec, '/app'];
  const m = MountPoint.safeParse(mount);
  if (!m.success)
    throw new ValidationError(`--app ${spec}: mount point ${mount} ${m.error.issues[0]?.message ?? 'is not valid'}`, { field: 'apps' });
  return { dir: path.resolve(dir), mount };
}

/** What a directory holds: bytes of its files and the number of entries. */
async function measure(dir: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      entries++;
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) bytes += Math.ceil((await fs.stat(p)).size / 4096) * 4096;
    }
  };
  await walk(dir);
  return { bytes, entries };
}

/**
 * Packs `dir` into a read-only ext4 image at `out` (mkfs.ext4 -d: e2fsprogs, no root, no loop
 * device). ext4 because the guest kernel has it built in; no journal, since nothing writes it.
 */
export async function packAppDir(dir: string, out: string): Promise<{ bytes: number; files: number }> {
  const st = await fs.stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new ValidationError(`--app ${dir} is not a directory`, { field: 'apps' });
  const { bytes, entries } = await measure(dir);
  // Room for the files, an inode and a directory block per entry, and ext4's own metadata.
  const size = Math.ceil((bytes * 1.1 + entries * 8192 + 16 * MiB) / MiB) * MiB;
  await fs.rm(out, { force: true });
  await fs.writeFile(out, '');
  await fs.truncate(out, size);
  const args = [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-b',
    '4096',
    '-m',
    '0',
    '-O',
    '^has_journal',
    '-N',
    String(entries + 64),
    '-L',
    'forky-app',
    '-U',
    FS_UUID,
  ];
  args.push('-E', `root_owner=0:0,hash_seed=${HASH_SEED},lazy_itable_init=0`, '-d', dir, out);
  try {
    const env = { ...process.env, E2FSPROGS_FAKE_TIME: '1' };
    await promisify(execFile)('mkfs.ext4', args, { env, maxBuffer: 4 * MiB });
    // mkfs makes a lost+found the directory never had; the guest must see the directory as it is.
    const own = await fs.stat(path.join(dir, 'lost+found')).then(
      () => true,
      () => false,
    );
    if (!own) await promisify(execFile)('debugfs', ['-w', '-R', 'rmdir lost+found', out], { env, maxBuffer: 4 * MiB });
  } catch (e) {
    await fs.rm(out, { force: true });
    throw new ForkyError('INTERNAL', `packing ${dir} failed (mkfs.ext4 from e2fsprogs): ${(e as Error).message}`, { cause: e });
  }
  return { bytes: size, files: entries };
}

/**
 * Packs each `DIR[:/mountpoint]` and puts the image in the cluster's object store, where any host
 * fetches it by digest; an unchanged directory gives the same digest and is not sent again.
 */
export async function uploadApps(nc: NatsConnection, specs: readonly string[]): Promise<AppMount[]> {
  if (specs.length === 0) return [];
  const parts = await ObjectPartStore.open(nc, resolveReplicas(nc, 'auto'));
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'forky-app-'));
  try {
    const out: AppMount[] = [];
    for (const [i, spec] of specs.entries()) {
      const { dir, mount } = parseAppSpec(spec);
      const image = path.join(tmp, `app${i}.ext4`);
      await packAppDir(dir, image);
      const up = await parts.upload(image);
      out.push({ layer: up.digest, mount });
    }
    return out;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}
