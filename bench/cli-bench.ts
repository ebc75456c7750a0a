/**
 * End to end through the CLI, as a user runs it: `forky vm boot` vs `forky fork SNAP --count 1`,
 * each a fresh CLI process, request to the child's agent answering; then batches of 16 and of
 * 100 children (`--big N` changes 100; `--big 0` skips it).
 *   node bench/dist/cli-bench.js [--runs N] [--big N] [--json]
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 5;
const big = args.includes('--big') ? Number(args[args.indexOf('--big') + 1]) : 100;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');

const data = await fs.mkdtemp(path.join(os.tmpdir(), 'fkbench-'));
await fs.mkdir(path.join(REPO, '.forky', 'images'), { recursive: true });
await fs.symlink(path.join(REPO, '.forky', 'images'), path.join(data, 'images'));
const forky = async (...a: string[]): Promise<{ ms: number; out: unknown }> => {
  const t = performance.now();
  const r = await promisify(execFile)(process.execPath, [CLI, '--json', ...a], {
    env: { ...process.env, FORKY_DATA: data },
    maxBuffer: 16 << 20,
  });
  return { ms: performance.now() - t, out: JSON.parse(r.stdout) as unknown };
};
try {
  await forky('up', '--detach');
  const noop = [];
  for (let i = 0; i < runs; i++) noop.push((await forky('status')).ms);
  const boots = [];
  for (let i = 0; i < runs; i++) {
    const r = await forky('vm', 'boot');
    boots.push(r.ms);
    await forky('vm', 'rm', (r.out as { id: string }).id);
  }
  const parent = (await forky('vm', 'boot')).out as { id: string };
  const snap = (await forky('snapshot', 'create', parent.id)).out as { id: string };
  const forks = [];
  for (let i = 0; i < runs; i++) {
    const r = await forky('fork', snap.id, '--count', '1');
    forks.push(r.ms);
    await forky('vm', 'rm', ...(r.out as { children: Array<{ id: string }> }).children.map((c) => c.id));
  }
  // Batches: every child answers its agent before the CLI returns (the default `until: ready`).
  const batch = async (count: number): Promise<number> => {
    const r = await forky('fork', snap.id, '--count', String(count));
    const ids = (r.out as { children: Array<{ id: string }> }).children.map((c) => c.id);
    if (ids.length !== count) throw new Error(`fork of ${count} gave ${ids.length} children`);
    for (let i = 0; i < ids.length; i += 50) await forky('vm', 'rm', ...ids.slice(i, i + 50));
    return r.ms;
  };
  const sixteen = [];
  for (let i = 0; i < Math.max(1, Math.ceil(runs / 2)); i++) sixteen.push(await batch(16));
  const hundred = big > 0 ? [await batch(big)] : [];
  const figures = [
    { name: 'forky fork SNAP --count 16, end to end', value: median(sixteen), unit: 'ms', runs: sixteen },
    ...(big > 0 ? [{ name: `forky fork SNAP --count ${big}, end to end`, value: median(hundred), unit: 'ms', runs: hundred }] : []),
    { name: 'forky vm boot, end to end', value: median(boots), unit: 'ms', runs: boots },
    { name: 'forky fork SNAP --count 1, end to end', value: median(forks), unit: 'ms', runs: forks },
    { name: 'boot / fork ratio', value: median(boots) / median(forks), unit: 'x', runs: [] as number[] },
    { name: 'forky status (CLI start + exit, no request)', value: median(noop), unit: 'ms', runs: noop },
  ];
  out(`${'figure'.padEnd(46)} ${'median'.padStart(8)}  unit  runs`);
  for (const f of figures)
    out(`${f.name.padEnd(46)} ${f.value.toFixed(1).padStart(8)}  ${f.unit.padEnd(4)}  ${f.runs.map(Math.round).join(' ')}`);
  if (json)
    process.stdout.write(
      JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 10) / 10, runs: f.runs.map(Math.round) }))) + '\n',
    );
} finally {
  await forky('down').catch(() => undefined);
  await fs.rm(data, { recursive: true, force: true });
}
