// Runs the compiled tests of a kind (unit | integration | faults | all) with node's test runner. Files
// that boot QEMU or start a hostd run one at a time: they share the machine's 2 cores and its QEMU
// processes. The rest (unit tests; integration tests on nats-server and fakes only) wait mostly on
// timers and sockets, so they run two at a time first (measured on 2 cores: unit 41 → 27 s, those
// integration files 41 → 27 s). The run has a directory of its own (FORKY_TEST_RUN_DIR) where
// ensureImageOnce (test/helpers/repo.ts) notes an image it checked, so that the next file need not.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
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
/** What a file that needs the machine to itself uses: the guest image, a hostd (in process or not), a boot. */
const SOLO = /ensureImage|startTestHost|spawnService|vm\.boot/;
/**
 * Alone as well: the Go toolchain (`go test` takes both cores; a unit test timing a loop beside it
 * fails), and the engine's files, which must run within 5 s of their start (reportDuration).
 */
const BUSY = /\('go', \[|reportDuration\(/;
const unit = path.join(root, 'unit') + path.sep;
const solo = (f) => {
  const text = readFileSync(f, 'utf8');
  return BUSY.test(text) || (!f.startsWith(unit) && SOLO.test(text));
};
const extra = process.argv.slice(3);
const runDir = mkdtempSync(path.join(os.tmpdir(), 'forky-test-run-'));
const env = { ...process.env, FORKY_TEST_RUN_DIR: runDir };
// A signal stops the runner (passed on: it may have come to this process alone) and any group after
// it; the run's directory still goes.
let stopped = false;
let current;
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => ((stopped = true), current?.kill(sig)));
const run = (group, concurrency) =>
  group.length === 0 || stopped
    ? Promise.resolve(stopped ? 1 : 0)
    : new Promise((resolve) => {
        current = spawn(
          process.execPath,
          ['--test', `--test-concurrency=${concurrency}`, `--test-timeout=${kind === 'unit' ? 30_000 : 600_000}`, ...extra, ...group],
          { stdio: 'inherit', env },
        ).on('exit', (code) => resolve(code ?? 1));
      });
try {
  const shared = await run(
    files.filter((f) => !solo(f)),
    2,
  );
  const alone = await run(files.filter(solo), 1);
  process.exitCode = shared || alone;
} finally {
  rmSync(runDir, { recursive: true, force: true });
}
