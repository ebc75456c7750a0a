/**
 * Issue 21's figures against their targets, each latency with its ratio to the raw QEMU floor and to
 * QEMU's own save/restore (floor-bench.ts) from the same run; issue 6's other figures as rows without
 * a target. The benches run in their own processes, one after another (they share the machine's cores).
 *   npm run bench [-- --quick] [--json] [--only fork-bench.js,cli-bench.js]
 * With --json: one JSON array on stdout of {name, value, unit, target, met, ratios, bench}, then a
 * row per bench of its wall time; the table goes to stderr, also in Markdown (for README's table).
 */
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './local.js';
import { markdown, plain, type Row } from './run-all-table.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const json = args.includes('--json');
const only = args.includes('--only') ? (args[args.indexOf('--only') + 1] ?? '').split(',') : undefined;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

interface Figure {
  name: string;
  value: number;
  unit: string;
  /** Set by benches that compare in their own run (sched-bench: to the direct request; cli-bench: to `node -e 0`). */
  ratio?: number;
  ratioTo?: string;
  vsFloor?: number;
}
/** Which floor-bench figures a latency is compared with: 1 child, 16, or N at once. */
type Floor = '1' | '16' | 'many';
interface Target {
  /** The bench's figure name. */
  from: string;
  name: string;
  /** Absent: shown without a target (issue 6's figures). */
  target?: number;
  /** `max`: the value must not exceed the target; `min`: it must reach it. */
  kind?: 'max' | 'min';
  floor?: Floor;
  /** Met also when the value is within this many times its floor (issue 21: 100 children). */
  orFloor?: number;
  /** The bench's own ratio figure to show beside it: e.g. project fork ÷ the save/restore peer. */
  peerFrom?: string;
}

const MANY = 100;
const S = (n: number): string => (n === 1 ? '1 child' : `${n} children`);
const FLOORS: Record<Floor, { floor: string; peer?: string; n: number }> = {
  '1': { floor: 'raw QEMU floor 1 child, spawn -> qga answering', peer: 'QEMU save/restore 1 child, spawn -> qga answering', n: 1 },
  '16': {
    floor: 'raw QEMU floor 16 children at once, until all answer',
    peer: 'QEMU save/restore 16 children at once, until all answer',
    n: 16,
  },
  many: { floor: `raw QEMU floor ${MANY} children at once, until all answer`, n: MANY },
};

const BENCHES: Array<{ script: string; args: string[]; targets: Target[] }> = [
  {
    script: 'floor-bench.js',
    args: [...(quick ? ['--quick'] : []), '--many', String(MANY)],
    targets: [
      { from: 'project fork 1 child, request -> agent answering', name: 'project fork, 1 child', floor: '1' },
      {
        from: 'project fork / raw floor (1 child)',
        name: 'project fork ÷ raw QEMU floor (1 child)',
        target: 1.3,
        kind: 'max',
        peerFrom: 'project fork / QEMU save/restore (1 child)',
      },
      { from: 'project fork 16 children, request -> all answering', name: 'project fork, 16 children', floor: '16' },
      {
        from: 'project fork / raw floor (16 children)',
        name: 'project fork ÷ raw QEMU floor (16 children)',
        target: 1.3,
        kind: 'max',
        peerFrom: 'project fork / QEMU save/restore (16 children)',
      },
    ],
  },
  {
    script: 'ship-bench.js',
    args: ['--runs', quick ? '2' : '3'],
    targets: [
      {
        from: 'cross-host fork of 1 child (parts new to host)',
        name: 'cross-host fork, image cached',
        target: 1000,
        kind: 'max',
        floor: '1',
      },
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
    script: 'cli-bench.js',
    args: quick ? ['--runs', '3'] : ['--runs', '5'],
    targets: [
      {
        from: `forky fork SNAP --count ${MANY}, end to end`,
        name: `${MANY} children answering, via the CLI (≤ 6 s or ≤ 1.3× floor)`,
        target: 6000,
        kind: 'max',
        floor: 'many',
        orFloor: 1.3,
      },
      { from: 'forky status (CLI start + exit, no request)', name: '`forky status` (CLI start-up)', target: 120, kind: 'max' },
      { from: 'forky fork VM --live --count 1, end to end', name: '`forky fork VM --live --count 1`, end to end', floor: '1' },
      { from: 'forky vm boot / forky fork VM --live', name: '`forky vm boot` ÷ `forky fork VM --live --count 1`', target: 10, kind: 'min' },
      { from: 'forky fork SNAP --count 16, end to end', name: '16 children answering, via the CLI', floor: '16' },
    ],
  },
  {
    script: 'sched-bench.js',
    args: quick ? ['--quick'] : [],
    targets: [
      {
        from: 'answering hosts: scheduler CPU per placement',
        name: 'scheduler CPU per placement (simulated hosts)',
        target: 0.4,
        kind: 'max',
      },
      { from: 'scheduler CPU per placement', name: 'scheduler CPU per placement (dry-run hostd)', target: 0.4, kind: 'max' },
      {
        from: 'scheduler overhead p99 (p99 via scheduler - p99 direct)',
        name: 'scheduler overhead p99, one at a time',
        target: 5,
        kind: 'max',
      },
      { from: 'scheduler placements per second', name: 'scheduler placements per second (dry-run hostd)' },
    ],
  },
  {
    script: 'fork-bench.js',
    args: quick ? ['--runs', '3'] : ['--runs', '5'],
    targets: [
      { from: 'live fork: parent pause (hostd pauseMs)', name: 'hot-fork parent pause, p50', target: 15, kind: 'max' },
      {
        from: 'fork 1 child from the warm pool to running (until: running)',
        name: 'warm-pool fork to running, p50',
        target: 15,
        kind: 'max',
        floor: '1',
      },
      { from: 'fork 1 child from snapshot to agent ready (cold)', name: 'fork 1 child through NATS to running, p50', floor: '1' },
      { from: 'boot / fork ratio', name: 'fork vs cold boot of the same guest' },
      { from: 'fork 1 child from the warm pool to agent ready', name: 'fork from a warm pool to agent ready, p50', floor: '1' },
      { from: 'boot / warm fork-to-running ratio', name: 'warm fork to running vs cold boot' },
    ],
  },
  {
    script: 'density-bench.js',
    args: ['--children', quick ? '16' : '32'],
    targets: [
      { from: 'Pss per idle child (median)', name: 'Pss of an idle child (256 MiB guest)' },
      { from: 'live children a 24 GiB host holds at that cost (512 MiB reserved)', name: 'live children on a 24 GiB host' },
    ],
  },
  { script: 'agent-bench.js', args: quick ? ['--runs', '5', '--mib', '32'] : ['--runs', '20'], targets: [] },
  { script: 'port-bench.js', args: quick ? ['--runs', '2', '--mib', '32', '--gets', '100'] : ['--runs', '3'], targets: [] },
];

const round = (v: number, to = 10): number => Math.round(v * to) / to;
const byBench = new Map<string, Figure[]>();
const walls: Row[] = [];
for (const b of BENCHES.filter((x) => !only || only.includes(x.script))) {
  out(`running ${b.script} ${b.args.join(' ')} (load ${os.loadavg()[0]?.toFixed(2)})`);
  const t0 = performance.now();
  let figures: Figure[] = [];
  try {
    const r = await promisify(execFile)(process.execPath, [path.join(REPO, 'bench', 'dist', b.script), ...b.args, '--json'], {
      maxBuffer: 64 << 20,
      timeout: 30 * 60_000,
    });
    figures = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '[]') as Figure[];
  } catch (e) {
    out(`  ${b.script} failed: ${(e as Error).message.split('\n')[0]}`);
  }
  byBench.set(b.script, figures);
  const s = (performance.now() - t0) / 1000;
  walls.push({
    name: `wall time: ${b.script} ${b.args.join(' ')}`,
    value: round(s),
    unit: 's',
    target: null,
    met: null,
    ratios: {},
    bench: b.script,
  });
  out(`  ${b.script}: ${s.toFixed(0)} s, ${figures.length} figures`);
}

/** A figure of any bench of this run, by name. */
const find = (name: string): Figure | undefined => [...byBench.values()].flat().find((f) => f.name === name);
const rows: Row[] = [];
for (const b of BENCHES.filter((x) => byBench.has(x.script))) {
  const figures = byBench.get(b.script) ?? [];
  for (const t of b.targets) {
    const f = figures.find((x) => x.name === t.from);
    const value = f ? round(f.value, 100) : null;
    const ratios: Record<string, number | null> = {};
    if (t.floor) {
      const fl = FLOORS[t.floor];
      ratios[`raw QEMU floor (${S(fl.n)})`] = f && find(fl.floor) ? round(f.value / (find(fl.floor) as Figure).value, 100) : null;
      if (fl.peer)
        ratios[`QEMU save/restore (${S(fl.n)})`] = f && find(fl.peer) ? round(f.value / (find(fl.peer) as Figure).value, 100) : null;
    }
    if (t.peerFrom) ratios['QEMU save/restore'] = find(t.peerFrom) ? round((find(t.peerFrom) as Figure).value, 100) : null;
    if (f?.ratio !== undefined) ratios[f.ratioTo ?? 'its baseline'] = round(f.ratio, 100);
    if (f?.vsFloor !== undefined) ratios['`node -e 0`'] = round(f.vsFloor, 100);
    let met: boolean | null = null;
    if (value !== null && t.target !== undefined) met = t.kind === 'min' ? value >= t.target : value <= t.target;
    const floorRatio = t.floor ? ratios[`raw QEMU floor (${S(FLOORS[t.floor].n)})`] : undefined;
    if (met === false && t.orFloor !== undefined && typeof floorRatio === 'number') met = floorRatio <= t.orFloor;
    rows.push({ name: t.name, value, unit: f?.unit ?? '', target: t.target ?? null, kind: t.kind, met, ratios, bench: b.script });
  }
  const targeted = new Set(b.targets.map((t) => t.from));
  for (const f of figures)
    if (!targeted.has(f.name))
      rows.push({
        name: f.name,
        value: round(f.value, 100),
        unit: f.unit,
        target: null,
        met: null,
        ratios: {},
        bench: b.script,
        extra: true,
      });
}

out('');
for (const line of plain([...rows, ...walls])) out(line);
out('');
out(
  `Markdown (issue 21's figures, then issue 6's; load average ${os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}):`,
);
for (const line of markdown(rows.filter((r) => !r.extra))) out(line);
out('');
for (const line of markdown(walls)) out(line);
if (json) process.stdout.write(JSON.stringify([...rows.map(({ extra: _e, ...r }) => r), ...walls]) + '\n');
