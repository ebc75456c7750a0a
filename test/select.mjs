// Runs the compiled tests of a kind (unit | integration | faults | all) with node's test runner, one file
// at a time: the integration tests share the machine's 2 cores and its QEMU processes.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), 'dist');
const kind = process.argv[2] ?? 'all';
const kinds = kind === 'all' ? ['unit', 'integration', 'faults'] : [kind];
const files = [];
const walk = (dir) => {
  for (const e of readdirSync(dir)) {
    const p = path.join(dir, e);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.test.js')) files.push(p);
  }
};
for (const k of kinds) walk(path.join(root, k));
files.sort();
const extra = process.argv.slice(3);
const r = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=1', `--test-timeout=${kind === 'unit' ? 30_000 : 600_000}`, ...extra, ...files],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
