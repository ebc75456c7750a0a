/**
 * Scheduler cost per request with many simulated hosts (hostd in dry-run mode: records only, no QEMU).
 *   node bench/dist/sched-bench.js [--quick] [--hosts N] [--requests M] [--serial S] [--rounds R]
 *     [--concurrency C] [--workers W] [--cpu-prof DIR] [--compare SCHEDULER_MAIN] [--json]
 * A placement is a `vm.boot` through the scheduler: keyless (run at once) and keyed (a durable job whose
 * outcome is recorded: what the CLI and SDK send). The same boot sent straight to a host is the baseline.
 * Each round: S requests one at a time, direct, keyless and keyed interleaved (so all three meet the same
 * machine), overhead = via scheduler - direct; then M of each kind with C in flight, and the CPU the
 * scheduler process spent on them (the hosts' CPU for the direct ones: what serving the same request
 * costs there). Figures are medians over rounds. `--compare` runs each round against that scheduler too
 * (e.g. a build of an earlier version), in turns, and prints this one's figures as a ratio to it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { newId, pollUntil } from '@forky/base';
import { HostdClient, SchedulerClient, startNatsServer } from '@forky/bus';
import { REPO } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => Number(args[args.indexOf(`--${name}`) + 1] || 0) || dflt;
const str = (name: string): string | undefined => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined);
const quick = args.includes('--quick');
const json = args.includes('--json');
const nHosts = opt('hosts', quick ? 20 : 100);
const nRequests = opt('requests', quick ? 400 : 1000);
const nSerial = opt('serial', quick ? 150 : 300);
const rounds = opt('rounds', quick ? 3 : 5);
const concurrency = opt('concurrency', 32);
const workers = opt('workers', 2);
const profDir = str('cpu-prof');
const SCHED_MAIN = path.join(REPO, 'services', 'scheduler', 'bin', 'forky-scheduler.js');
const compare = str('compare');
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

/** CPU time (user + system) processes have used, in ms. */
async function cpuMs(...pids: number[]): Promise<number> {
  let sum = 0;
  for (const pid of pids) {
    const f = (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
    sum += ((Number(f[11]) + Number(f[12])) * 1000) / 100; // clock ticks: 100/s on Linux
  }
  return sum;
}

const exited = (p: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
  });

const nats = await startNatsServer();
const workerProcs: ChildProcess[] = [];
const nc = await connect({ servers: nats.url, name: 'sched-bench' });
let sched: ChildProcess | undefined;
/** Starts a scheduler process (with a CPU profile written on its exit if asked) and waits until it sees every host. */
async function startSched(main: string): Promise<ChildProcess> {
  const prof = profDir && main === SCHED_MAIN ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [];
  const p = spawn(process.execPath, [...prof, main, '--nats', nats.url, '--log-level', 'warn'], { stdio: 'ignore' });
  const probe = new SchedulerClient(nc, { timeoutMs: 2_000 });
  await pollUntil(
    async () =>
      (await probe.call('hosts', {}).catch(() => ({ hosts: [] }))).hosts.filter((h) => h.alive).length === nHosts ? true : undefined,
    { timeoutMs: 60_000, what: `the scheduler seeing ${nHosts} simulated hosts alive` },
  );
  return p;
}

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
  const ids = workerProcs.flatMap((_, w) =>
    Array.from({ length: Math.floor(nHosts / workers) + (w < nHosts % workers ? 1 : 0) }, (_, i) => `sim${w}x${i}`),
  );
  const direct = ids.map((id) => new HostdClient(nc, id, { timeoutMs: 60_000 }));
  const client = new SchedulerClient(nc, { timeoutMs: 60_000 });
  const hostPids = workerProcs.map((p) => p.pid as number);
  type Kind = 'direct' | 'keyless' | 'keyed';
  const call = (kind: Kind, i: number): Promise<unknown> =>
    kind === 'direct'
      ? (direct[i % direct.length] as HostdClient).call('vm.boot', { memMiB: 256 })
      : client.call('vm.boot', { memMiB: 256, ...(kind === 'keyed' ? { key: newId('bench', 16) } : {}) });
  const KINDS: Kind[] = ['direct', 'keyless', 'keyed'];
  out(
    `scheduler bench: ${nHosts} simulated hosts in ${workers} processes; ${rounds} rounds of ${nSerial} requests one at a time and ${nRequests} with ${concurrency} in flight, of each kind${compare ? `; against ${compare} in turns` : ''}`,
  );

  /** One round against the running scheduler: every figure of it, by name. */
  const round = async (pid: number): Promise<Record<string, number>> => {
    const serial: Record<Kind, number[]> = { direct: [], keyless: [], keyed: [] };
    for (let i = 0; i < nSerial; i++)
      for (let k = 0; k < KINDS.length; k++) {
        const kind = KINDS[(i + k) % KINDS.length] as Kind;
        const t = performance.now();
        await call(kind, i);
        serial[kind].push(performance.now() - t);
      }
    const r: Record<string, number> = {};
    for (const kind of ['keyless', 'keyed'] as const) {
      r[`overhead p99 ${kind}`] = pct(serial[kind], 99) - pct(serial.direct, 99);
      r[`overhead p50 ${kind}`] = pct(serial[kind], 50) - pct(serial.direct, 50);
    }
    r['direct p50'] = pct(serial.direct, 50);
    r['direct p99'] = pct(serial.direct, 99);
    for (const kind of KINDS) {
      const [s0, h0] = [await cpuMs(pid), await cpuMs(...hostPids)];
      const run = await drive(nRequests, concurrency, (i) => call(kind, i));
      const [s1, h1] = [await cpuMs(pid), await cpuMs(...hostPids)];
      if (kind === 'direct') r['host cpu'] = (h1 - h0) / nRequests;
      else {
        r[`cpu ${kind}`] = (s1 - s0) / nRequests;
        r[`rate ${kind}`] = (nRequests / run.wallMs) * 1000;
      }
    }
    return r;
  };

  // Warm-up (JIT, connections, buckets), not counted.
  const mains = compare ? [SCHED_MAIN, compare] : [SCHED_MAIN];
  const results = new Map<string, Array<Record<string, number>>>(mains.map((m) => [m, []]));
  for (let n = 0; n < rounds; n++)
    for (const main of n % 2 ? [...mains].reverse() : mains) {
      sched = await startSched(main);
      await drive(200, 8, (i) => call(KINDS[i % 3] as Kind, i));
      results.get(main)?.push(await round(sched.pid as number));
      await exited(sched);
    }
  const med = (main: string, name: string): number => median((results.get(main) ?? []).map((r) => r[name] as number));
  const m = (name: string): number => med(SCHED_MAIN, name);
  type Figure = { name: string; value: number; unit: string; target?: number; met?: boolean; ratio?: number; ratioTo?: string };
  const max = (name: string, value: number, unit: string, target: number): Figure => ({ name, value, unit, target, met: value <= target });
  const figures: Figure[] = [
    { name: 'scheduler placements per second', value: m('rate keyless'), unit: '/s', target: 2000, met: m('rate keyless') >= 2000 },
    { name: 'scheduler placements per second, keyed', value: m('rate keyed'), unit: '/s' },
    { name: 'same request straight to a host p50', value: m('direct p50'), unit: 'ms' },
    { name: 'same request straight to a host p99', value: m('direct p99'), unit: 'ms' },
    {
      ...max('scheduler overhead p99 (p99 via scheduler - p99 direct)', m('overhead p99 keyless'), 'ms', 5),
      ratio: (m('overhead p99 keyless') + m('direct p99')) / m('direct p99'),
      ratioTo: 'p99 direct',
    },
    {
      ...max('scheduler overhead p99, keyed', m('overhead p99 keyed'), 'ms', 5),
      ratio: (m('overhead p99 keyed') + m('direct p99')) / m('direct p99'),
      ratioTo: 'p99 direct',
    },
    { name: 'scheduler overhead p50', value: m('overhead p50 keyless'), unit: 'ms' },
    { name: 'scheduler overhead p50, keyed', value: m('overhead p50 keyed'), unit: 'ms' },
    { ...max('scheduler CPU per placement', m('cpu keyless'), 'ms', 0.4), ratio: m('cpu keyless') / m('host cpu'), ratioTo: 'host CPU' },
    { ...max('scheduler CPU per placement, keyed', m('cpu keyed'), 'ms', 0.4), ratio: m('cpu keyed') / m('host cpu'), ratioTo: 'host CPU' },
    { name: 'host CPU per request (the same boot, direct)', value: m('host cpu'), unit: 'ms' },
    { name: 'placements per second one core of scheduler would allow', value: 1000 / m('cpu keyless'), unit: '/s' },
    { name: 'keyed placements per second one core of scheduler would allow', value: 1000 / m('cpu keyed'), unit: '/s' },
  ];
  if (compare) {
    // This scheduler's figure over the compared one's, from the same run: below 1 is less time or CPU.
    const names = ['overhead p99 keyless', 'overhead p99 keyed', 'cpu keyless', 'cpu keyed'];
    for (const name of names)
      figures.push({
        name: `${name}: compared scheduler`,
        value: med(compare, name),
        unit: 'ms',
        ratio: m(name) / med(compare, name),
        ratioTo: 'compared',
      });
  }
  out('');
  for (const f of figures)
    out(
      `${f.name.padEnd(62)} ${f.value.toFixed(2).padStart(9)} ${f.unit.padEnd(3)} ${f.target !== undefined ? `target ${f.target} ${f.met ? 'met' : 'NOT met'}` : ''}${f.ratio !== undefined ? `  (${f.ratio.toFixed(2)}x ${f.ratioTo})` : ''}`,
    );
  const r2 = (v: number): number => Math.round(v * 100) / 100;
  if (json)
    process.stdout.write(
      JSON.stringify(figures.map((f) => ({ ...f, value: r2(f.value), ...(f.ratio !== undefined ? { ratio: r2(f.ratio) } : {}) }))) + '\n',
    );
} finally {
  if (sched) await exited(sched);
  await nc.close();
  await Promise.all(workerProcs.map(exited));
  await nats.stop();
}
