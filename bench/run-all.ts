/**
 * Every figure of issue 6 against its target, from the benches that measure them, each in its
 * own process (one after another: they share the machine's cores).
 *   npm run bench [-- --quick] [--json]
 * With --json: one JSON array on stdout of {name, value, unit, target, met}; the table goes to stderr.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './local.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const json = args.includes('--json');
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

interface Figure {
  name: string;
  value: number;
  unit: string;
}
interface Target {
  /** The bench's figure name. */
  from: string;
  name: string;
  target: number;
  /** `max`: the value must not exceed the target; `min`: it must reach it. */
  kind: 'max' | 'min';
}

const BENCHES: Array<{ script: string; args: string[]; targets: Target[] }> = [
  {
    script: 'fork-bench.js',
    args: quick ? ['--runs', '3'] : ['--runs', '5'],
    targets: [
      {
        from: 'fork 1 child from snapshot to agent ready (cold)',
        name: 'fork 1 child through NATS to running, p50',
        target: 60,
        kind: 'max',
      },
      { from: 'boot / fork ratio', name: 'fork vs cold boot of the same guest', target: 40, kind: 'min' },
      {
        from: 'fork 1 child from the warm pool to agent ready',
        name: 'fork from a warm pool to agent ready, p50',
        target: 15,
        kind: 'max',
      },
      {
        from: 'fork 1 child from the warm pool to running (until: running)',
        name: 'fork from a warm pool to running, p50',
        target: 15,
        kind: 'max',
      },
      { from: 'boot / warm fork-to-running ratio', name: 'warm fork to running vs cold boot', target: 40, kind: 'min' },
      { from: 'live fork: parent pause (hostd pauseMs)', name: 'hot-fork parent pause, p50', target: 15, kind: 'max' },
    ],
  },
  {
    script: 'floor-bench.js',
    args: quick ? ['--quick'] : [],
    targets: [
      // Issue 21: the project's fork within 1.3x of QEMU started by hand, same guest, same run.
      { from: 'project fork / raw floor (1 child)', name: 'project fork / raw QEMU floor (1 child, same run)', target: 1.3, kind: 'max' },
      {
        from: 'project fork / raw floor (16 children)',
        name: 'project fork / raw QEMU floor (16 children, same run)',
        target: 1.3,
        kind: 'max',
      },
    ],
  },
  {
    script: 'density-bench.js',
    args: ['--children', quick ? '16' : '32'],
    targets: [
      { from: 'Pss per idle child (median)', name: 'Pss of an idle child (256 MiB guest)', target: 20, kind: 'max' },
      {
        from: 'live children a 24 GiB host holds at that cost (512 MiB reserved)',
        name: 'live children on a 24 GiB host',
        target: 300,
        kind: 'min',
      },
    ],
  },
  {
    script: 'cli-bench.js',
    args: quick ? ['--runs', '3'] : ['--runs', '5'],
    targets: [
      { from: 'forky fork SNAP --count 16, end to end', name: '16 children answering, via the CLI', target: 1000, kind: 'max' },
      { from: 'forky fork SNAP --count 100, end to end', name: '100 children answering, via the CLI', target: 6000, kind: 'max' },
    ],
  },
  {
    script: 'ship-bench.js',
    args: ['--runs', quick ? '2' : '3'],
    targets: [
      { from: 'cross-host fork of 1 child (parts new to host)', name: 'cross-host fork, image layers cached', target: 1000, kind: 'max' },
      {
        from: 'snapshot shipping, effective rate (nominal bytes / fetch time)',
        name: 'snapshot shipping, effective rate',
        target: 1,
        kind: 'min',
      },
      {
        from: 'cross-host re-snapshot bytes shipped ÷ bytes of pages dirtied',
        name: 're-snapshot bytes shipped ÷ pages dirtied',
        target: 2,
        kind: 'max',
      },
    ],
  },
  {
    script: 'agent-bench.js',
    args: quick ? ['--runs', '5', '--mib', '32'] : ['--runs', '20'],
    targets: [],
  },
  {
    script: 'port-bench.js',
    args: quick ? ['--runs', '2', '--mib', '32', '--gets', '100'] : ['--runs', '3'],
    targets: [],
  },
  {
    script: 'sched-bench.js',
    args: quick ? ['--quick'] : [],
    targets: [
      { from: 'scheduler placements per second', name: 'scheduler placements per second (simulated hosts)', target: 2000, kind: 'min' },
      { from: 'scheduler overhead p99 (p99 via scheduler - p99 direct)', name: 'scheduler overhead, p99', target: 5, kind: 'max' },
    ],
  },
];

const results: Array<{ name: string; value: number | null; unit: string; target: number | null; met: boolean | null }> = [];
for (const b of BENCHES) {
  out(`running ${b.script} ${b.args.join(' ')}`);
  let figures: Figure[] = [];
  try {
    const r = await promisify(execFile)(process.execPath, [path.join(REPO, 'bench', 'dist', b.script), ...b.args, '--json'], {
      maxBuffer: 64 << 20,
      timeout: 20 * 60_000,
    });
    figures = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '[]') as Figure[];
  } catch (e) {
    out(`  ${b.script} failed: ${(e as Error).message.split('\n')[0]}`);
  }
  const targeted = new Set(b.targets.map((t) => t.from));
  for (const t of b.targets) {
    const f = figures.find((x) => x.name === t.from);
    const value = f ? Math.round(f.value * 10) / 10 : null;
    results.push({
      name: t.name,
      value,
      unit: f?.unit ?? '',
      target: t.target,
      met: value === null ? null : t.kind === 'max' ? value <= t.target : value >= t.target,
    });
  }
  for (const f of figures)
    if (!targeted.has(f.name)) results.push({ name: f.name, value: Math.round(f.value * 10) / 10, unit: f.unit, target: null, met: null });
}

out('');
out(`${'figure'.padEnd(62)} ${'value'.padStart(9)} ${'unit'.padEnd(5)} ${'target'.padStart(7)}  met`);
for (const r of results) {
  const met = r.met === null ? '' : r.met ? 'yes' : 'NO';
  out(
    `${r.name.padEnd(62)} ${(r.value === null ? 'n/a' : r.value.toFixed(1)).padStart(9)} ${r.unit.padEnd(5)} ${(r.target === null ? '' : String(r.target)).padStart(7)}  ${met}`,
  );
}
if (json) process.stdout.write(JSON.stringify(results) + '\n');
