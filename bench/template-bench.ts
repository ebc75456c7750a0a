/**
 * Templates (issue 19): a cold `vm.boot --image debian` against `vm.boot --template` of a debian
 * template, both through the scheduler on one host, and what a template's VM costs (Pss).
 *   npm run bench:template [-- --runs N] [--json]
 * Prints a table (stderr when --json) and, with --json, one JSON array on stdout.
 */
import fs from 'node:fs/promises';
import { createLogger } from '@forky/base';
import { SchedulerClient } from '@forky/bus';
import type { VmInfo } from '@forky/contract';
import { loadSchedulerConfig, startScheduler } from '@forky/scheduler';
import { startLocal } from './local.js';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 5;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const pssMB = async (pid: number): Promise<number> => {
  const t = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(t)?.[1] ?? NaN) / 1024;
};

const local = await startLocal();
const sched = await startScheduler(
  loadSchedulerConfig({ nats: { servers: [local.nats.url] }, logLevel: 'warn' }),
  createLogger({ level: 'warn', name: 'bench' }),
);
const client = new SchedulerClient(local.nc, { timeoutMs: 600_000 });
const figures: Array<{ name: string; value: number; unit: string; detail?: string }> = [];
const children: VmInfo[] = [];
try {
  const { accel } = await local.client.call('host.info', {});
  out(`template bench: ${runs} runs each, accel=${accel}, debian, 256 MiB guest`);
  const cold: number[] = [];
  for (let i = 0; i < runs; i++) {
    const [ms, vm] = await timed(() => client.call('vm.boot', { image: 'debian' }));
    cold.push(ms);
    await client.call('vm.destroy', { id: vm.id });
  }
  const [makeMs, t] = await timed(() =>
    client.call('template.create', {
      name: 'bench',
      image: 'debian',
      run: [
        'python3 -m venv --without-pip /opt/v && echo ready > /etc/ready',
        "setsid sh -c 'exec python3 -m http.server 8000' </dev/null >/dev/null 2>&1 &",
      ],
      ready: 'curl -sf -o /dev/null http://127.0.0.1:8000/',
    }),
  );
  const forks: number[] = [];
  for (let i = 0; i < runs; i++) {
    const [ms, vm] = await timed(() => client.call('vm.boot', { template: 'bench' }));
    forks.push(ms);
    children.push(vm);
  }
  // Every child alive at once: each counts its share of the template's frozen RAM and its own pages.
  const pss = await Promise.all(children.map((c) => pssMB(c.pid as number)));
  const c0 = median(cold);
  const f0 = median(forks);
  figures.push(
    { name: `cold vm.boot --image debian (median of ${runs})`, value: c0, unit: 'ms', detail: cold.map(Math.round).join(' ') },
    { name: `vm.boot --template (median of ${runs})`, value: f0, unit: 'ms', detail: forks.map(Math.round).join(' ') },
    { name: 'cold boot / template boot', value: c0 / f0, unit: 'x' },
    { name: 'template create (debian, 2 steps + ready)', value: makeMs, unit: 'ms', detail: JSON.stringify(t.timings) },
    {
      name: `Pss of a template child (median of ${runs}, all alive)`,
      value: median(pss),
      unit: 'MB',
      detail: pss.map((p) => p.toFixed(1)).join(' '),
    },
  );
  for (const f of figures) out(`${f.name.padEnd(56)} ${f.value.toFixed(f.unit === 'x' ? 1 : 0).padStart(8)} ${f.unit}  ${f.detail ?? ''}`);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  for (const c of children) await client.call('vm.destroy', { id: c.id }).catch(() => undefined);
  await client.call('template.delete', { name: 'bench' }).catch(() => undefined);
  await sched.stop();
  await local.stop();
}
