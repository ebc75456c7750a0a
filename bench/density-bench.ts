/**
 * Density: what a live, idle child of a 256 MiB guest costs the host, measured as the drop in
 * MemAvailable over N children (so it counts QEMU, page tables, tmpfs and kernel, not only Pss).
 * Then KSM is switched on the way hostd's `ksm.enabled` does it, and the same figure is read again
 * once KSM has scanned everything twice (`--no-ksm` skips it; the settings are put back after).
 *   node bench/dist/density-bench.js [--children N] [--no-ksm] [--json]
 */
import fs from 'node:fs/promises';
import { delay, pollUntil } from '@forky/base';
import { startLocal } from './local.js';

const args = process.argv.slice(2);
const n = Number(args[args.indexOf('--children') + 1] || 0) || 32;
const json = args.includes('--json');
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const KSM = '/sys/kernel/mm/ksm';
const ksmRead = async (f: string): Promise<number> => Number((await fs.readFile(`${KSM}/${f}`, 'utf8')).trim());
const availMiB = async (): Promise<number> =>
  Number(/^MemAvailable:\s+(\d+)/m.exec(await fs.readFile('/proc/meminfo', 'utf8'))?.[1]) / 1024;
const pssMB = async (pid: number): Promise<number> =>
  Number(/^Pss:\s+(\d+) kB/m.exec(await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? NaN) / 1024;

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
  // KSM, measured against the figure above in the same run.
  let ksm: { perChild: number; savedMiB: number } | undefined;
  if (!args.includes('--no-ksm')) {
    const saved = await Promise.all(['run', 'pages_to_scan', 'sleep_millisecs'].map(ksmRead)).catch(() => undefined);
    if (saved) {
      try {
        await fs.writeFile(`${KSM}/pages_to_scan`, '5000');
        await fs.writeFile(`${KSM}/sleep_millisecs`, '10');
        await fs.writeFile(`${KSM}/run`, '1');
        const scans = await ksmRead('full_scans');
        await pollUntil(async () => ((await ksmRead('full_scans')) >= scans + 2 ? true : undefined), {
          timeoutMs: 120_000,
          intervalMs: 200,
          what: 'two full KSM scans',
        });
        const avail = await availMiB();
        ksm = { perChild: (before - avail) / kids.length, savedMiB: ((await ksmRead('pages_sharing')) * 4096) / 2 ** 20 };
      } finally {
        await fs.writeFile(`${KSM}/run`, '2'); // unmerge what this bench merged, then restore
        await fs.writeFile(`${KSM}/run`, String(saved[0]));
        await fs.writeFile(`${KSM}/pages_to_scan`, String(saved[1]));
        await fs.writeFile(`${KSM}/sleep_millisecs`, String(saved[2]));
      }
    }
  }
  const total = Number(/^MemTotal:\s+(\d+)/m.exec(await fs.readFile('/proc/meminfo', 'utf8'))?.[1]) / 1024;
  const figures = [
    {
      name: 'fork of 16 children through NATS (no CLI), to all answering',
      value: [...batches].sort((a, b) => a - b)[Math.floor(batches.length / 2)] as number,
      unit: 'ms',
      target: 1000,
    },
    { name: 'host memory per idle child (MemAvailable drop / children)', value: perChild, unit: 'MiB' },
    {
      name: 'Pss per idle child (median)',
      value: [...pss].sort((a, b) => a - b)[Math.floor(pss.length / 2)] as number,
      unit: 'MB',
      target: 20,
    },
    {
      name: 'live children a 24 GiB host holds at that cost (512 MiB reserved)',
      value: (24 * 1024 - 512) / perChild,
      unit: '',
      target: 300,
    },
    ...(ksm
      ? [
          { name: 'host memory per idle child with KSM on (same children)', value: ksm.perChild, unit: 'MiB' },
          { name: 'KSM: memory saved across these children', value: ksm.savedMiB, unit: 'MiB' },
        ]
      : []),
    { name: `this host (${Math.round(total)} MiB): children that fit`, value: (before - 512) / perChild, unit: '' },
  ].map((f) => ({
    ...f,
    met: f.target === undefined ? undefined : f.unit === 'ms' || f.unit === 'MB' ? f.value <= f.target : f.value >= f.target,
  }));
  for (const f of figures)
    out(
      `${f.name.padEnd(70)} ${f.value.toFixed(1).padStart(8)} ${f.unit.padEnd(4)} ${f.target === undefined ? '' : `target ${f.target} ${f.met ? 'met' : 'NOT met'}`}`,
    );
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await local.stop();
}
