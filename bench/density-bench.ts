/**
 * Density: what a live, idle child of a 256 MiB guest costs the host, measured as the drop in
 * MemAvailable over N children (so it counts QEMU, page tables, tmpfs and kernel, not only Pss).
 *   node bench/dist/density-bench.js [--children N] [--json]
 */
import fs from 'node:fs/promises';
import { delay } from '@forky/base';
import { startLocal } from './local.js';

const args = process.argv.slice(2);
const n = Number(args[args.indexOf('--children') + 1] || 0) || 32;
const json = args.includes('--json');
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const availMiB = async (): Promise<number> => Number(/^MemAvailable:\s+(\d+)/m.exec(await fs.readFile('/proc/meminfo', 'utf8'))?.[1]) / 1024;
const pssMB = async (pid: number): Promise<number> => Number(/^Pss:\s+(\d+) kB/m.exec(await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? NaN) / 1024;

const local = await startLocal();
const { client } = local;
try {
  const parent = await client.call('vm.boot', { memMiB: 256 });
  const snap = await client.call('snapshot.create', { vm: parent.id, resume: false });
  await delay(2000);
  const before = await availMiB();
  const batches: number[] = [];
  const kids: Array<{ id: string; pid?: number }> = [];
  for (let made = 0; made < n; made += 16) {
    const t = performance.now();
    const r = await client.call('fork', { source: snap.id, count: Math.min(16, n - made) });
    batches.push(performance.now() - t);
    kids.push(...r.children);
  }
  // Idle: let TCG settle, then read.
  await delay(5000);
  const after = await availMiB();
  const pss = await Promise.all(kids.map((k) => pssMB(k.pid as number)));
  const perChild = (before - after) / kids.length;
  const total = Number(/^MemTotal:\s+(\d+)/m.exec(await fs.readFile('/proc/meminfo', 'utf8'))?.[1]) / 1024;
  const figures = [
    { name: 'fork of 16 children, request to all answering', value: [...batches].sort((a, b) => a - b)[Math.floor(batches.length / 2)] as number, unit: 'ms', target: 1000 },
    { name: 'host memory per idle child (MemAvailable drop / children)', value: perChild, unit: 'MiB' },
    { name: 'Pss per idle child (median)', value: [...pss].sort((a, b) => a - b)[Math.floor(pss.length / 2)] as number, unit: 'MB', target: 20 },
    { name: 'live children a 24 GiB host holds at that cost (512 MiB reserved)', value: (24 * 1024 - 512) / perChild, unit: '', target: 300 },
    { name: `this host (${Math.round(total)} MiB): children that fit`, value: (before - 512) / perChild, unit: '' },
  ].map((f) => ({ ...f, met: f.target === undefined ? undefined : f.unit === 'ms' || f.unit === 'MB' ? f.value <= f.target : f.value >= f.target }));
  for (const f of figures) out(`${f.name.padEnd(70)} ${f.value.toFixed(1).padStart(8)} ${f.unit.padEnd(4)} ${f.target === undefined ? '' : `target ${f.target} ${f.met ? 'met' : 'NOT met'}`}`);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await local.stop();
}
