/**
 * What the egress filter (README "Network isolation") adds to making and removing a VM: nft apply,
 * refused-count read and remove per VM, beside the floor of any such step, one process spawn
 * (`nft --version`), measured in the same run. No QEMU: the filter's own cost.
 *   node bench/dist/net-bench.js [--runs N] [--vms N] [--json]
 */
import { execa } from 'execa';
import { silentLogger } from '@forky/base';
import { openNetworkFilter } from '@forky/hostd/internal';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const num = (flag: string, dflt: number): number => {
  const i = args.indexOf(flag);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const runs = num('--runs', 5);
const vms = num('--vms', 50);
const json = args.includes('--json');
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const filter = await openNetworkFilter({
  hostId: `bench-net-${process.pid}`,
  natsServers: ['nats://127.0.0.1:4222'],
  deny: [],
  mode: 'user',
  filter: 'nftables',
  log: silentLogger(),
});
const per = { spawn: [] as number[], apply: [] as number[], change: [] as number[], refused: [] as number[], remove: [] as number[] };
try {
  for (let r = 0; r < runs; r++) {
    const ids = Array.from({ length: vms }, (_, i) => `vm-bench${r}x${String(i).padStart(4, '0')}`);
    const each = async (fn: (id: string) => Promise<unknown>): Promise<number> =>
      (
        await timed(async () => {
          for (const id of ids) await fn(id);
        })
      )[0] / vms;
    per.spawn.push(await each(() => execa('nft', ['--version'])));
    per.apply.push(await each((id) => filter.apply(id, 'internet')));
    per.change.push(await each((id) => filter.apply(id, { allow: ['10.1.0.0/16:443', '203.0.113.7'], dns: true })));
    per.refused.push(await each((id) => filter.refused(id)));
    per.remove.push(await each((id) => filter.remove(id)));
  }
} finally {
  await filter.close({ vmsLeft: 0 });
}

const spawn = median(per.spawn);
const figures = [
  { name: 'process spawn floor (nft --version)', value: spawn, unit: 'ms', runs: per.spawn },
  { name: `apply a VM's filter (${vms} VMs in turn)`, value: median(per.apply), unit: 'ms', runs: per.apply },
  { name: 'change a running VM policy', value: median(per.change), unit: 'ms', runs: per.change },
  { name: 'read its refused count', value: median(per.refused), unit: 'ms', runs: per.refused },
  { name: "remove a VM's filter", value: median(per.remove), unit: 'ms', runs: per.remove },
  { name: 'apply / spawn floor', value: median(per.apply) / spawn, unit: 'x', runs: [] as number[] },
  { name: 'remove / spawn floor', value: median(per.remove) / spawn, unit: 'x', runs: [] as number[] },
];
out(`${'figure'.padEnd(44)} ${'value'.padStart(8)}  unit  runs`);
for (const f of figures)
  out(`${f.name.padEnd(44)} ${f.value.toFixed(2).padStart(8)}  ${f.unit.padEnd(4)}  ${f.runs.map((x) => x.toFixed(1)).join(' ')}`);
if (json) process.stdout.write(JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 100) / 100 }))) + '\n');
