/**
 * End to end through the CLI, as a user runs it: `forky vm boot` vs `forky fork SNAP --count 1`,
 * each a fresh CLI process, request to the child's agent answering.
 *   node bench/dist/cli-bench.js [--runs N] [--json]
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './local.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 5;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

const data = await fs.mkdtemp(path.join(os.tmpdir(), 'fkbench-'));
await fs.mkdir(path.join(REPO, '.forky', 'images'), { recursive: true });
await fs.symlink(path.join(REPO, '.forky', 'images'), path.join(data, 'images'));
const forky = async (...a: string[]): Promise<{ ms: number; out: unknown }> => {
  const t = performance.now();
  const r = await promisify(execFile)(process.execPath, [CLI, '--json', ...a], { env: { ...process.env, FORKY_DATA: data }, maxBuffer: 16 << 20 });
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
  const figures = [
    { name: 'forky vm boot, end to end', value: median(boots), unit: 'ms', runs: boots },
    { name: 'forky fork SNAP --count 1, end to end', value: median(forks), unit: 'ms', runs: forks },
    { name: 'boot / fork ratio', value: median(boots) / median(forks), unit: 'x', runs: [] as number[] },
    { name: 'forky status (CLI start + exit, no request)', value: median(noop), unit: 'ms', runs: noop },
  ];
  out(`${'figure'.padEnd(46)} ${'median'.padStart(8)}  unit  runs`);
  for (const f of figures) out(`${f.name.padEnd(46)} ${f.value.toFixed(1).padStart(8)}  ${f.unit.padEnd(4)}  ${f.runs.map(Math.round).join(' ')}`);
  if (json) process.stdout.write(JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 10) / 10, runs: f.runs.map(Math.round) }))) + '\n');
} finally {
  await forky('down').catch(() => undefined);
  await fs.rm(data, { recursive: true, force: true });
}
