import fs from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { ForkyError, ValidationError } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { IMAGE_RECIPES } from '../paths.js';
import type { CliContext } from '../commands/context.js';

/** A cold debian build takes a minute or two here; a slow mirror gets far more, but not forever. */
const BUILD_TIMEOUT_MS = 30 * 60_000;

interface ManifestView {
  id: string;
  kernelVersion: string;
  parts: Record<string, { size: number; virtualSize?: number }>;
}

interface ImageRow {
  name: string;
  id: string;
  /** Bytes of its parts on this host (kernel, initrd, disk). */
  sizeBytes: number;
  /** The disk a VM gets by default (`vm boot --disk` asks for more). */
  diskBytes?: number;
  kernel: string;
  built: string;
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
/** For people: sizes in MiB and GiB (--json keeps the bytes). */
const forTable = (r: ImageRow) => ({ ...r, size: mib(r.sizeBytes), disk: r.diskBytes ? `${r.diskBytes / 2 ** 30} GiB` : undefined });

/** The build a name has: its own script (tiny's), or the generic builder for an images/NAME/image.json. */
async function buildCommand(name: string): Promise<string[]> {
  const own = path.join(IMAGE_RECIPES, name, 'build.sh');
  const recipe = path.join(IMAGE_RECIPES, name, 'image.json');
  const has = (p: string): Promise<boolean> =>
    fs.access(p).then(
      () => true,
      () => false,
    );
  if (await has(own)) return [own];
  if (await has(recipe)) return [path.join(IMAGE_RECIPES, 'build-recipe.sh'), name];
  throw new ForkyError('NOT_FOUND', `no recipe for image ${name} (no ${recipe}; images/README.md says how to write one)`);
}

/** `forky image ls`: images built in the data directory. */
export async function ls(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const dir = path.join(cli.dataOf(cmd), 'images');
  const rows: ImageRow[] = [];
  for (const name of (await fs.readdir(dir).catch(() => [] as string[])).sort()) {
    const file = path.join(dir, name, 'manifest.json');
    const m = await fs.readFile(file, 'utf8').then(
      (t) => JSON.parse(t) as ManifestView,
      () => undefined,
    );
    if (!m?.parts) continue;
    const built = await fs.stat(file);
    const parts = Object.values(m.parts);
    const disk = m.parts.disk?.virtualSize;
    rows.push({
      name,
      id: m.id,
      sizeBytes: parts.reduce((n, p) => n + (p.size ?? 0), 0),
      ...(disk ? { diskBytes: disk } : {}),
      kernel: m.kernelVersion,
      built: built.mtime.toISOString().replace(/\.\d+Z$/, 'Z'),
    });
  }
  if (cli.json(cmd)) printJson(rows);
  else printTable(rows.map(forTable), ['name', 'id', 'size', 'disk', 'kernel', 'built']);
}

/** `forky image build [NAME]`: from its recipe, skipped when up to date. */
export async function build(cli: CliContext, name: string | undefined, _o: unknown, cmd: Command): Promise<void> {
  const n = name ?? 'tiny';
  if (!/^[a-z0-9][a-z0-9_-]*$/.test(n)) throw new ValidationError(`invalid image name ${JSON.stringify(n)}`, { field: 'name' });
  const [script, ...args] = await buildCommand(n);
  const out = path.join(cli.dataOf(cmd), 'images');
  const env = { ...process.env, ...(process.stderr.isTTY ? {} : { FORKY_QUIET: '1' }) };
  await promisify(execFile)('bash', [script as string, ...args, out], { env, maxBuffer: 64 << 20, timeout: BUILD_TIMEOUT_MS }).catch(
    (e: Error & { stderr?: string; killed?: boolean }) => {
      const why = e.killed ? `timed out after ${BUILD_TIMEOUT_MS / 60_000} min` : (e.stderr ?? '').trim().split('\n').slice(-5).join('\n');
      throw new ForkyError('INTERNAL', `building image ${n} failed: ${why || e.message}`);
    },
  );
  const m = JSON.parse(await fs.readFile(path.join(out, n, 'manifest.json'), 'utf8')) as { id: string };
  if (cli.json(cmd)) printJson({ name: n, id: m.id });
  else process.stdout.write(`${n} ${m.id}\n`);
}
