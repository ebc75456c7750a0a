/**
 * Where a snapshot's pause goes, step by step (hostd's `snapshot taken` log line), with the guest
 * dirtying 1 MiB / 50 ms as fork-bench's live forks do:
 *   - a first snapshot of a booted VM (its RAM file renamed, nothing copied), one per boot;
 *   - live forks of that VM, which now maps a frozen file (the pages it made its own are copied).
 *   node bench/dist/pause-bench.js [--runs N] [--boots K]
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { createLogger } from '@forky/base';
import { HostdClient, startNatsServer } from '@forky/bus';
import { startEphemeralHostd } from '@forky/hostd';
import { REPO } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => Number(args[args.indexOf(name) + 1] || 0) || dflt;
const runs = opt('--runs', 10);
const boots = opt('--boots', 3);
const CHURN = '(while true; do dd if=/dev/urandom of=/run/churn bs=64k count=16 2>/dev/null; usleep 50000; done) >/dev/null 2>&1 &';

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'forky-pause-bench-'));
const logFile = path.join(dir, 'hostd.log');
const nats = await startNatsServer();
const host = await startEphemeralHostd({
  natsUrl: nats.url,
  imagesDir: path.join(REPO, '.forky', 'images'),
  logger: createLogger({ level: 'info', name: 'forky', destination: logFile }),
  probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json'),
});
const nc = await connect({ servers: nats.url, name: 'forky-pause-bench' });
const client = new HostdClient(nc, host.hostId, { timeoutMs: 300_000 });
const first: string[] = [];
const live: string[] = [];
try {
  for (let b = 0; b < boots; b++) {
    const vm = await client.call('vm.boot', { memMiB: 256 });
    await client.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', 'dd if=/dev/urandom of=/run/blob bs=1M count=32 2>/dev/null'] });
    await client.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', CHURN] });
    first.push((await client.call('snapshot.create', { vm: vm.id, resume: true })).id);
    for (let i = 0; b === 0 && i < runs; i++) {
      const r = await client.call('fork', { source: vm.id, count: 1, resumeParent: true });
      live.push(r.snapshot.id);
      for (const c of r.children) await client.call('vm.destroy', { id: c.id });
    }
    await client.call('vm.destroy', { id: vm.id });
  }
} finally {
  await host.stop();
  await nc.close();
  await nats.stop();
}

// pino writes asynchronously: the lines are in the file once the host has stopped.
type Taken = { snapshot: string; pauseMs: number; privateBytes: number; pauseSteps: Record<string, number> };
const taken = new Map<string, Taken>();
for (const line of (await fs.readFile(logFile, 'utf8')).split('\n')) {
  if (!line.includes('"snapshot taken"')) continue;
  const t = JSON.parse(line) as Taken;
  taken.set(t.snapshot, t);
}
await fs.rm(dir, { recursive: true, force: true });

const [load1, load5] = os.loadavg();
console.log(`pause breakdown, ms (medians; load ${load1?.toFixed(2)} ${load5?.toFixed(2)})`);
for (const [name, ids] of [
  ['first snapshot (RAM renamed)', first],
  ['live fork (private pages copied)', live],
] as const) {
  const rows = ids.map((id) => taken.get(id)).filter((t): t is Taken => t !== undefined);
  const steps = Object.keys(rows[0]?.pauseSteps ?? {});
  const cols = steps.map((s) => `${s} ${median(rows.map((r) => r.pauseSteps[s] ?? NaN)).toFixed(1)}`);
  const kib = median(rows.map((r) => r.privateBytes / 1024));
  console.log(
    `${name.padEnd(34)} pause ${median(rows.map((r) => r.pauseMs)).toFixed(1)} = ${cols.join(', ')}; private ${kib.toFixed(0)} KiB`,
  );
  console.log(`${''.padEnd(34)} pauses ${rows.map((r) => r.pauseMs.toFixed(1)).join(' ')}`);
}
