/**
 * App-layer figures of one host, through NATS: packing and uploading a directory, booting and
 * forking with a layer against the same without one (same run), swapping a layer in a running VM,
 * and reading the app from the guest.
 *   npm run bench:apps [-- --runs N] [--mib M] [--json]
 * Prints a table (stderr when --json) and, with --json, one JSON array on stdout.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { uploadApps } from '@forky/cli';
import { startLocal } from './local.js';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const opt = (name: string, dflt: number): number => Number(args[args.indexOf(name) + 1] || 0) || dflt;
const runs = opt('--runs', 3);
const mib = opt('--mib', 64);
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const round = (x: number): number => Math.round(x * 10) / 10;

interface Figure {
  name: string;
  value: number;
  unit: string;
}

const local = await startLocal();
const { client } = local;
const { nc } = local;
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'forky-app-bench-'));
const figures: Figure[] = [];
try {
  const accel = (await client.call('host.info', {})).accel;
  out(`forky app bench: ${runs} runs each, accel=${accel}, app directory of ${mib} × 1 MiB files`);
  for (let i = 0; i < mib; i++) await fs.writeFile(path.join(dir, `f${i}.bin`), randomBytes(1 << 20));

  // Pack + upload: each run changes one file, so each is a new layer that really travels.
  const packs: number[] = [];
  let apps = await uploadApps(nc, [`${dir}:/opt/app`]);
  for (let i = 0; i < runs; i++) {
    await fs.writeFile(path.join(dir, 'stamp'), String(i));
    const [ms, a] = await timed(() => uploadApps(nc, [`${dir}:/opt/app`]));
    packs.push(ms);
    apps = a;
  }
  const [sameMs] = await timed(() => uploadApps(nc, [`${dir}:/opt/app`]));

  const bootPlain: number[] = [];
  const bootApp: number[] = [];
  for (let i = 0; i < runs; i++) {
    const [a, v1] = await timed(() => client.call('vm.boot', {}));
    bootPlain.push(a);
    await client.call('vm.destroy', { id: v1.id });
    const [b, v2] = await timed(() => client.call('vm.boot', { apps }));
    bootApp.push(b);
    await client.call('vm.destroy', { id: v2.id });
  }

  const plain = await client.call('vm.boot', {});
  const withApp = await client.call('vm.boot', { apps });
  const [readMs, r] = await timed(() =>
    client.call('vm.exec', { id: withApp.id, cmd: ['/bin/sh', '-c', 'cat /opt/app/*.bin | wc -c'], timeoutMs: 300_000 }),
  );
  if (Number(r.stdout.trim()) !== mib << 20) throw new Error(`read ${r.stdout.trim()} bytes, not ${mib << 20}`);

  const forkPlain: number[] = [];
  const forkApp: number[] = [];
  for (let i = 0; i < runs; i++) {
    for (const [vm, list] of [
      [plain, forkPlain],
      [withApp, forkApp],
    ] as const) {
      const snap = await client.call('snapshot.create', { vm: vm.id, resume: true });
      const [ms, f] = await timed(() => client.call('fork', { source: snap.id, count: 1 }));
      list.push(ms);
      for (const c of f.children) await client.call('vm.destroy', { id: c.id });
    }
  }

  // Swap: alternate two layers at the same mount point of the running VM.
  const other = apps;
  await fs.writeFile(path.join(dir, 'stamp'), 'other');
  const next = await uploadApps(nc, [`${dir}:/opt/app`]);
  const swaps: number[] = [];
  for (let i = 0; i < runs; i++) {
    const [ms] = await timed(() => client.call('vm.app', { id: withApp.id, apps: i % 2 ? other : next }));
    swaps.push(ms);
  }

  figures.push(
    { name: `pack + upload a ${mib} MiB directory (new layer)`, value: round(median(packs)), unit: 'ms' },
    { name: 'pack + upload, throughput', value: round(mib / (median(packs) / 1000)), unit: 'MiB/s' },
    { name: 'pack + upload an unchanged directory (same layer, not sent)', value: round(sameMs), unit: 'ms' },
    { name: 'boot without an app', value: round(median(bootPlain)), unit: 'ms' },
    { name: 'boot with an app (fetch, disk, mount)', value: round(median(bootApp)), unit: 'ms' },
    { name: 'boot with / without an app', value: Math.round((median(bootApp) / median(bootPlain)) * 100) / 100, unit: 'x' },
    { name: 'fork 1 child, VM without an app', value: round(median(forkPlain)), unit: 'ms' },
    { name: 'fork 1 child, VM with an app', value: round(median(forkApp)), unit: 'ms' },
    { name: 'fork with / without an app', value: Math.round((median(forkApp) / median(forkPlain)) * 100) / 100, unit: 'x' },
    { name: 'swap the layer of a running VM (hot-plug, remount, unplug)', value: round(median(swaps)), unit: 'ms' },
    { name: `guest reads the ${mib} MiB app (cold)`, value: round(mib / (readMs / 1000)), unit: 'MiB/s' },
  );
  const w = Math.max(...figures.map((f) => f.name.length));
  for (const f of figures) out(`${f.name.padEnd(w)}  ${String(f.value).padStart(9)} ${f.unit}`);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await fs.rm(dir, { recursive: true, force: true });
  await local.stop();
}
