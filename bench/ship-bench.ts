/**
 * Cross-host fork of one child (the snapshot's parts not yet on the target, the image there)
 * vs a local fork, two hosts on one nats-server, medians of N; and bytes shipped vs nominal.
 * Each run snapshots the same VM again, so from the second run on the target holds the new
 * snapshot's parent: a re-snapshot, whose bytes shipped are set against the pages it dirtied.
 * Before that, part shipping alone (ship-parts.ts), beside the old sparse path.
 *   node bench/dist/ship-bench.js [--runs N] [--json] [--dirtied PAGES] [--no-old] [--parts-only]
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { createLogger } from '@forky/base';
import { SchedulerClient, startNatsServer } from '@forky/bus';
import { startEphemeralHostd } from '@forky/hostd';
import { loadSchedulerConfig, startScheduler } from '@forky/scheduler';
import { REPO } from './local.js';
import { partFigures, type Figure } from './ship-parts.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const opt = (flag: string, dflt: number): number => (args.includes(flag) ? Number(args[args.indexOf(flag) + 1]) || dflt : dflt);
const runs = opt('--runs', 3);
const dirtied = opt('--dirtied', 1024);
const PAGE = 4096;

/** Pages that differ between two files (a missing or shorter file reads as zeros). */
async function pagesDiffering(a: string, b: string): Promise<number> {
  const [x, y] = await Promise.all([fs.readFile(a).catch(() => Buffer.alloc(0)), fs.readFile(b).catch(() => Buffer.alloc(0))]);
  const zero = Buffer.alloc(PAGE);
  let n = 0;
  for (let at = 0; at < Math.max(x.length, y.length); at += PAGE) {
    const p = x.length > at ? x.subarray(at, at + PAGE) : zero;
    const q = y.length > at ? y.subarray(at, at + PAGE) : zero;
    if (!p.equals(q.length === p.length ? q : zero.subarray(0, p.length))) n++;
  }
  return n;
}
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const logger = createLogger({ level: 'warn', name: 'bench' });
const nats = await startNatsServer();
const partFigs = await partFigures(nats.url, { runs, dirtied, old: !args.includes('--no-old'), dir: '/dev/shm' });
const print = (figures: Figure[]): void => {
  out(`${'figure'.padEnd(64)} ${'value'.padStart(9)}  unit   runs`);
  for (const f of figures)
    out(
      `${f.name.padEnd(64)} ${f.value.toFixed(2).padStart(9)}  ${f.unit.padEnd(5)}  ${f.runs.map((x) => (x >= 100 ? Math.round(x) : x.toFixed(2))).join(' ')}`,
    );
};
if (args.includes('--parts-only')) {
  print(partFigs);
  if (json) process.stdout.write(JSON.stringify(partFigs) + '\n');
  await nats.stop();
  process.exit(0);
}
const imagesDir = path.join(REPO, '.forky', 'images');
const probeCacheFile = path.join(REPO, '.forky', 'accel-probe.json');
const [a, b] = (await Promise.all(
  ['bench-a', 'bench-b'].map((hostId) => startEphemeralHostd({ natsUrl: nats.url, imagesDir, logger, hostId, probeCacheFile })),
)) as [Awaited<ReturnType<typeof startEphemeralHostd>>, Awaited<ReturnType<typeof startEphemeralHostd>>];
const sched = await startScheduler(loadSchedulerConfig({ nats: { servers: [nats.url] }, logLevel: 'warn' }), logger);
const nc = await connect({ servers: nats.url });
const c = new SchedulerClient(nc, { timeoutMs: 300_000 });
try {
  const parent = await c.call('vm.boot', { host: 'bench-a' });
  await c.call('vm.exec', { id: parent.id, cmd: ['/bin/sh', '-c', 'dd if=/dev/urandom of=/run/blob bs=1M count=32 2>/dev/null'] });
  const local: number[] = [];
  const remote: number[] = [];
  let shipped = 0;
  let nominal = 0;
  const fetchMs: number[] = [];
  const publishMs: number[] = [];
  const forkMs: number[] = [];
  const reRatio: number[] = [];
  const reRate: number[] = [];
  let prev: string | undefined;
  for (let i = 0; i < runs; i++) {
    // A fresh snapshot each run, so its parts are new to host b (the image is there already).
    const snap = await c.call('snapshot.create', { vm: parent.id, resume: true });
    const files = (id: string): [string, string] => [
      path.join(a.ramDir, 'snapshots', `${id}.ram`),
      path.join(a.dataDir, 'snapshots', id, 'state.bin'),
    ];
    const dirtiedPages = prev
      ? (await pagesDiffering(files(prev)[0], files(snap.id)[0])) + (await pagesDiffering(files(prev)[1], files(snap.id)[1]))
      : 0;
    let t = performance.now();
    const l = await c.call('fork', { source: snap.id, count: 1 });
    local.push(performance.now() - t);
    t = performance.now();
    const r = await c.call('fork', { source: snap.id, count: 1, host: 'bench-b' });
    remote.push(performance.now() - t);
    const fetch = (r.transfers ?? []).find((x) => x.host === 'bench-b');
    const pub = (r.transfers ?? []).find((x) => x.host === 'bench-a');
    publishMs.push(pub?.ms ?? 0);
    forkMs.push(Math.max(...r.timings.childMs));
    shipped = fetch?.bytes ?? 0;
    nominal = fetch?.nominalBytes ?? 0;
    fetchMs.push(fetch?.ms ?? 0);
    if (prev && dirtiedPages > 0) {
      reRatio.push(shipped / (dirtiedPages * PAGE));
      reRate.push(nominal / 2 ** 30 / ((fetch?.ms ?? 1) / 1000));
      out(`run ${i}: re-snapshot shipped ${(shipped / 2 ** 20).toFixed(2)} MiB for ${dirtiedPages} dirtied pages (RAM + state)`);
    }
    prev = snap.id;
    for (const v of [...l.children, ...r.children]) await c.call('vm.destroy', { id: v.id });
  }
  const figures = [
    { name: 'local fork of 1 child (snapshot at home)', value: median(local), unit: 'ms', runs: local },
    { name: 'cross-host fork of 1 child (parts new to host)', value: median(remote), unit: 'ms', runs: remote },
    { name: '  of which publish at home', value: median(publishMs), unit: 'ms', runs: publishMs },
    { name: '  of which fetch on the target', value: median(fetchMs), unit: 'ms', runs: fetchMs },
    { name: '  of which the child on the target (hostd childMs)', value: median(forkMs), unit: 'ms', runs: forkMs },
    { name: 'bytes shipped to the target (last run)', value: shipped / 2 ** 20, unit: 'MiB', runs: [] as number[] },
    { name: 'nominal size of the snapshot (last run)', value: nominal / 2 ** 20, unit: 'MiB', runs: [] as number[] },
    {
      name: 'snapshot shipping, effective rate (nominal bytes / fetch time)',
      value: nominal / 2 ** 30 / (median(fetchMs) / 1000),
      unit: 'GiB/s',
      runs: [] as number[],
    },
    { name: 'cross-host re-snapshot fetch, effective rate', value: reRate.length ? median(reRate) : 0, unit: 'GiB/s', runs: reRate },
    {
      name: 'cross-host re-snapshot bytes shipped ÷ bytes of pages dirtied',
      value: reRatio.length ? median(reRatio) : 0,
      unit: 'x',
      runs: reRatio,
    },
    ...partFigs,
  ];
  print(figures);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await sched.stop();
  await nc.close();
  await a.stop();
  await b.stop();
  await nats.stop();
}
