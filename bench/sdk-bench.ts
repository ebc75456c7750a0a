/**
 * What the SDK costs over a raw NATS request (issue 20): the same scheduler call, `vm.show` of one
 * VM, through `forky.vms.get()` and as a bare JSON request on its subject (what `nats req` sends),
 * one at a time, p50 and p99 of each and their difference, in the same run.
 *   npm run bench:sdk [-- --runs N] [--json]
 */
import { Forky } from '@forky/sdk';
import { subjects } from '@forky/contract';
import { loadSchedulerConfig, startScheduler } from '@forky/scheduler';
import { createLogger } from '@forky/base';
import { startLocal } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 500;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const pct = (xs: number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] as number;

const local = await startLocal();
const sched = await startScheduler(
  loadSchedulerConfig({ nats: { servers: [local.nats.url] }, logLevel: 'warn' }),
  createLogger({ level: 'warn', name: 'bench' }),
);
const forky = Forky.fromConnection(local.nc);
try {
  const vm = await forky.vms.create({ memMiB: 256 });
  const subject = subjects.sched('vm.show');
  const body = new TextEncoder().encode(JSON.stringify({ id: vm.id }));
  const sdk: number[] = [];
  const raw: number[] = [];
  for (let i = 0; i < 50; i++) {
    await forky.vms.get(vm.id);
    await local.nc.request(subject, body, { timeout: 10_000 });
  }
  // Interleaved, so both see the same machine.
  for (let i = 0; i < runs; i++) {
    let t = performance.now();
    await forky.vms.get(vm.id);
    sdk.push(performance.now() - t);
    t = performance.now();
    const m = await local.nc.request(subject, body, { timeout: 10_000 });
    JSON.parse(new TextDecoder().decode(m.data));
    raw.push(performance.now() - t);
  }
  await vm.destroy();
  const figures = [
    { name: 'vm.show through the SDK, p50', value: median(sdk), unit: 'ms' },
    { name: 'vm.show as a raw JSON NATS request, p50', value: median(raw), unit: 'ms' },
    { name: 'SDK overhead, p50', value: median(sdk) - median(raw), unit: 'ms' },
    { name: 'vm.show through the SDK, p99', value: pct(sdk, 99), unit: 'ms' },
    { name: 'vm.show as a raw JSON NATS request, p99', value: pct(raw, 99), unit: 'ms' },
  ];
  out(`forky sdk bench: ${runs} calls each, interleaved`);
  for (const f of figures) out(`  ${f.name.padEnd(48)} ${f.value.toFixed(3)} ${f.unit}`);
  if (json) process.stdout.write(JSON.stringify(figures) + '\n');
} finally {
  await sched.stop();
  await local.stop();
}
