/**
 * Cross-host fork of one child (the snapshot's parts not yet on the target, the image there)
 * vs a local fork, two hosts on one nats-server, medians of N; and bytes shipped vs nominal.
 *   node bench/dist/ship-bench.js [--runs N] [--json]
 */
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { createLogger } from '@forky/base';
import { SchedulerClient, startNatsServer } from '@forky/bus';
import { startEphemeralHostd } from '@forky/hostd';
import { loadSchedulerConfig, startScheduler } from '@forky/scheduler';
import { REPO } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 3;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const logger = createLogger({ level: 'warn', name: 'bench' });
const nats = await startNatsServer();
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
  for (let i = 0; i < runs; i++) {
    // A fresh snapshot each run, so its parts are new to host b (the image is there already).
    const snap = await c.call('snapshot.create', { vm: parent.id, resume: true });
    let t = performance.now();
    const l = await c.call('fork', { source: snap.id, count: 1 });
    local.push(performance.now() - t);
    t = performance.now();
    const r = await c.call('fork', { source: snap.id, count: 1, host: 'bench-b' });
    remote.push(performance.now() - t);
    const fetch = (r.transfers ?? []).find((x) => x.host === 'bench-b');
    shipped = fetch?.bytes ?? 0;
    nominal = fetch?.nominalBytes ?? 0;
    fetchMs.push(fetch?.ms ?? 0);
    for (const v of [...l.children, ...r.children]) await c.call('vm.destroy', { id: v.id });
  }
  const figures = [
    { name: 'local fork of 1 child (snapshot at home)', value: median(local), unit: 'ms', runs: local },
    { name: 'cross-host fork of 1 child (parts new to host)', value: median(remote), unit: 'ms', runs: remote },
    { name: '  of which fetch on the target', value: median(fetchMs), unit: 'ms', runs: fetchMs },
    { name: 'bytes shipped to the target (last run)', value: shipped / 2 ** 20, unit: 'MiB', runs: [] as number[] },
    { name: 'nominal size of the snapshot (last run)', value: nominal / 2 ** 20, unit: 'MiB', runs: [] as number[] },
    {
      name: 'snapshot shipping, effective rate (nominal bytes / fetch time)',
      value: nominal / 2 ** 30 / (median(fetchMs) / 1000),
      unit: 'GiB/s',
      runs: [] as number[],
    },
  ];
  out(`${'figure'.padEnd(48)} ${'value'.padStart(9)}  unit  runs`);
  for (const f of figures)
    out(`${f.name.padEnd(48)} ${f.value.toFixed(1).padStart(9)}  ${f.unit.padEnd(4)}  ${f.runs.map(Math.round).join(' ')}`);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await sched.stop();
  await nc.close();
  await a.stop();
  await b.stop();
  await nats.stop();
}
