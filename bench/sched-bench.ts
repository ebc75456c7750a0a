/**
 * Scheduler placement cost with many simulated hosts (hostd in dry-run mode: records only, no QEMU).
 *   node bench/dist/sched-bench.js [--hosts N] [--requests M] [--concurrency C] [--json]
 * The scheduler runs in its own process, the simulated hosts in --workers others. Each placement is a `vm.boot` through the scheduler; the
 * same boots sent straight to a host are the baseline, so overhead = scheduler path - direct path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { pollUntil } from '@forky/base';
import { HostdClient, SchedulerClient, startNatsServer } from '@forky/bus';
import { REPO } from './local.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => Number(args[args.indexOf(`--${name}`) + 1] || 0) || dflt;
const quick = args.includes('--quick');
const json = args.includes('--json');
const nHosts = opt('hosts', quick ? 20 : 100);
const nRequests = opt('requests', quick ? 1000 : 4000);
const concurrency = opt('concurrency', 32);
const workers = opt('workers', 2);
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

/** Runs `n` calls with `c` in flight; returns each call's latency and the wall time. */
async function drive(n: number, c: number, call: (i: number) => Promise<unknown>): Promise<{ lat: number[]; wallMs: number }> {
  const lat: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (next < n) {
        const i = next++;
        const t = performance.now();
        await call(i);
        lat.push(performance.now() - t);
      }
    }),
  );
  return { lat, wallMs: performance.now() - t0 };
}

/** CPU time (user + system) a process has used, in ms. */
async function cpuMs(pid: number): Promise<number> {
  const f = (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // clock ticks: 100/s on Linux
}

const nats = await startNatsServer();
const workerProcs: ChildProcess[] = [];
const sched = spawn(
  process.execPath,
  [path.join(REPO, 'services', 'scheduler', 'bin', 'forky-scheduler.js'), '--nats', nats.url, '--log-level', 'warn'],
  { stdio: 'ignore' },
);
const nc = await connect({ servers: nats.url, name: 'sched-bench' });
try {
  // Hosts spread over worker processes, so they do not share one event loop with each other or us.
  await Promise.all(
    Array.from({ length: workers }, (_, w) => {
      const count = Math.floor(nHosts / workers) + (w < nHosts % workers ? 1 : 0);
      const p = spawn(
        process.execPath,
        [path.join(REPO, 'bench', 'dist', 'sim-hosts.js'), '--nats', nats.url, '--prefix', `sim${w}x`, '--count', String(count)],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      workerProcs.push(p);
      return new Promise<void>((resolve, reject) => {
        p.stdout?.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
        p.once('exit', (code) => reject(new Error(`simulated hosts worker ${w} exited (${code})`)));
      });
    }),
  );
  const client = new SchedulerClient(nc, { timeoutMs: 60_000 });
  await pollUntil(
    async () =>
      (await client.call('hosts', {}).catch(() => ({ hosts: [] }))).hosts.filter((h) => h.alive).length === nHosts ? true : undefined,
    {
      timeoutMs: 60_000,
      what: `${nHosts} simulated hosts alive`,
    },
  );
  out(`scheduler bench: ${nHosts} simulated hosts in ${workers} processes, ${nRequests} placements, ${concurrency} in flight`);

  const direct = new HostdClient(nc, 'sim0x0', { timeoutMs: 60_000 });
  const base = await drive(Math.min(nRequests, 500), concurrency, () => direct.call('vm.boot', { memMiB: 256 }));
  const placed = new Map<string, number>();
  const cpu0 = await cpuMs(sched.pid as number);
  const viaSched = await drive(nRequests, concurrency, async () => {
    const vm = await client.call('vm.boot', { memMiB: 256 });
    placed.set(vm.host, (placed.get(vm.host) ?? 0) + 1);
  });
  const rate = (nRequests / viaSched.wallMs) * 1000;
  const schedCpu = ((await cpuMs(sched.pid as number)) - cpu0) / nRequests;
  const figures = [
    { name: 'scheduler placements per second', value: rate, unit: '/s', target: 2000, met: rate >= 2000 },
    { name: 'placement latency p50 via scheduler', value: pct(viaSched.lat, 50), unit: 'ms' },
    { name: 'placement latency p99 via scheduler', value: pct(viaSched.lat, 99), unit: 'ms' },
    { name: 'same request straight to a host p50', value: pct(base.lat, 50), unit: 'ms' },
    { name: 'same request straight to a host p99', value: pct(base.lat, 99), unit: 'ms' },
    {
      name: 'scheduler overhead p99 (p99 via scheduler - p99 direct)',
      value: pct(viaSched.lat, 99) - pct(base.lat, 99),
      unit: 'ms',
      target: 5,
      met: pct(viaSched.lat, 99) - pct(base.lat, 99) <= 5,
    },
    { name: 'hosts used', value: placed.size, unit: '' },
    { name: 'scheduler CPU per placement', value: schedCpu, unit: 'ms' },
    { name: 'placements per second one core of scheduler would allow', value: 1000 / schedCpu, unit: '/s' },
  ];
  out('');
  for (const f of figures)
    out(
      `${f.name.padEnd(58)} ${f.value.toFixed(1).padStart(9)} ${f.unit.padEnd(3)} ${'target' in f ? `target ${f.target} ${f.met ? 'met' : 'NOT met'}` : ''}`,
    );
  if (json) process.stdout.write(JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 10) / 10 }))) + '\n');
} finally {
  sched.kill('SIGTERM');
  await nc.close();
  await Promise.all(
    workerProcs.map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.exitCode !== null) return resolve();
          p.once('exit', () => resolve());
          p.kill('SIGTERM');
        }),
    ),
  );
  await nats.stop();
}
