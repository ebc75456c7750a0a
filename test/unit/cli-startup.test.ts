import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { Option } from 'commander';
import { buildProgram } from '@forky/cli';
import { EVENT_KINDS, TEMPLATE_READY_TIMEOUT_MAX_MS } from '@forky/contract';
import { REPO } from '../helpers/repo.js';

const DIST = path.join(REPO, 'services', 'cli', 'dist');
/** What a command that sends no request must not load: the contract's zod, NATS, the codec, the logger. */
const HEAVY = /node_modules\/(zod|@nats-io\/|msgpackr|pino)/;

/**
 * Every module a CLI run resolved, as source paths: a resolve hook (in node's loader thread) notes
 * each URL in a file; a chunk of the bundle (services/cli/bundle.mjs) stands for the sources it holds.
 */
async function loadedBy(
  dir: string,
  entry: string[],
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string; sources: string[] }> {
  const log = path.join(dir, `modules-${Math.random().toString(36).slice(2)}.txt`);
  const r = await promisify(execFile)(
    process.execPath,
    ['--import', pathToFileURL(path.join(dir, 'register.mjs')).href, ...entry, ...args],
    {
      env: { ...process.env, ...env, FORKY_TEST_MODULE_LOG: log },
    },
  ).then(
    (x) => ({ code: 0, stdout: x.stdout, stderr: x.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
  );
  const urls = (await fs.readFile(log, 'utf8')).split('\n').filter((u) => u.startsWith('file://'));
  const inputs = JSON.parse(await fs.readFile(path.join(DIST, 'bundle-inputs.json'), 'utf8').catch(() => '{}')) as Record<string, string[]>;
  const sources = urls.flatMap((u) => {
    const p = new URL(u).pathname;
    const chunk = path.dirname(p) === DIST ? inputs[path.basename(p)] : undefined;
    return chunk ?? [path.relative(REPO, p)];
  });
  return { ...r, sources };
}

describe('forky start-up: a command loads only what it runs', () => {
  let dir: string;
  let data: string;
  let deadPid: number;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkstart-'));
    await fs.writeFile(
      path.join(dir, 'hooks.mjs'),
      "import fs from 'node:fs';\n" +
        'export async function resolve(specifier, context, next) {\n' +
        '  const r = await next(specifier, context);\n' +
        "  fs.appendFileSync(process.env.FORKY_TEST_MODULE_LOG, r.url + '\\n');\n" +
        '  return r;\n' +
        '}\n',
    );
    await fs.writeFile(
      path.join(dir, 'register.mjs'),
      `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(path.join(dir, 'hooks.mjs')).href)});\n`,
    );
    // A process that has exited: status must leave it out.
    const gone = spawn(process.execPath, ['-e', '0']);
    deadPid = gone.pid as number;
    await new Promise((resolve) => gone.once('exit', resolve));
    data = path.join(dir, 'data');
    await fs.mkdir(data);
    const cluster = {
      server: 'nats://127.0.0.1:4999',
      processes: [
        { role: 'nats', pid: process.pid },
        { role: 'hostd', pid: deadPid, host: 'host-1' },
      ],
    };
    await fs.writeFile(path.join(data, 'cluster.json'), JSON.stringify(cluster));
  });

  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  // The CLI as installed (dist/main.js: the bundle after `npm run build`), and tsc's modules of the same program.
  const entries: Array<[string, string[]]> = [
    ['dist/main.js', [path.join(DIST, 'main.js')]],
    [
      "tsc's program.js",
      [
        '--input-type=module',
        '-e',
        `const { buildProgram } = await import(${JSON.stringify(pathToFileURL(path.join(DIST, 'program.js')).href)});\n` +
          "await buildProgram().parseAsync(['node', 'forky', ...process.argv.slice(1)]);",
        // The end of node's own options: `--version` and `--help` are the program's.
        '--',
      ],
    ],
  ];

  for (const [name, entry] of entries) {
    it(`${name}: --version, --help, a command's help and a usage error load no zod, NATS, msgpackr or pino`, async () => {
      const version = await loadedBy(dir, entry, ['--version']);
      assert.equal(version.code, 0, version.stderr);
      assert.equal(version.stdout, '0.1.0\n');
      const help = await loadedBy(dir, entry, ['--help']);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /Usage: forky \[options\] \[command\]/);
      const boot = await loadedBy(dir, entry, ['vm', 'boot', '--help']);
      assert.match(boot.stdout, /--ttl <duration>/);
      const usage = await loadedBy(dir, entry, ['fork', 'vm-aaaaaaaaaaaa']);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /required option '--count <n>' not specified/);
      for (const r of [version, help, boot, usage]) {
        assert.ok(r.sources.length > 0, 'the hook saw the modules');
        assert.deepEqual(
          r.sources.filter((s) => HEAVY.test(s)),
          [],
        );
      }
    });

    it(`${name}: status reads cluster.json, lists the live processes only, and loads nothing of the cluster code`, async () => {
      const r = await loadedBy(dir, entry, ['--json', 'status'], { FORKY_DATA: data });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { server: 'nats://127.0.0.1:4999', processes: [{ role: 'nats', pid: process.pid }] });
      assert.deepEqual(
        r.sources.filter((s) => HEAVY.test(s) || /local-cluster|session|libs\//.test(s)),
        [],
      );
      const none = await loadedBy(dir, entry, ['status'], { FORKY_DATA: path.join(dir, 'nothing-here') });
      assert.equal(none.stdout, 'server: (none)\n(none)\n');
    });

    it(`${name}: a command that needs the contract loads it when it runs (a bad --ttl still exits 2, naming the flag)`, async () => {
      const r = await loadedBy(dir, entry, ['vm', 'boot', '--ttl', '500ms']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /^error: option '--ttl <duration>' argument '500ms' is invalid\. --ttl: from 1s to 30d/);
      assert.ok(
        r.sources.some((s) => /node_modules\/zod\//.test(s)),
        'the check is the contract’s own',
      );
    });
  }

  it('the help and the --kind parser carry the contract’s own values (copied into the light command table)', () => {
    const program = buildProgram();
    const sub = (...names: string[]) =>
      names.reduce((c, n) => c.commands.find((x) => x.name() === n) ?? assert.fail(`no command ${n}`), program);
    const opt = (o: readonly Option[], long: string): Option => o.find((x) => x.long === long) ?? assert.fail(`no option ${long}`);
    const kind = opt(sub('events').options, '--kind');
    assert.ok(kind.description.endsWith(`: ${EVENT_KINDS.join(', ')}`), kind.description);
    for (const k of EVENT_KINDS) assert.deepEqual(kind.parseArg?.(k, []), [k]);
    assert.throws(() => kind.parseArg?.('sleeping', []), /--kind must be one of/);
    const ready = opt(sub('template', 'create').options, '--ready-timeout');
    assert.match(ready.description, new RegExp(`at most ${TEMPLATE_READY_TIMEOUT_MAX_MS / 60_000}m\\)$`));
  });
});
