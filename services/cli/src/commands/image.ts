import fs from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { ForkyError, ValidationError } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { IMAGE_RECIPES } from '../paths.js';
import type { CliContext } from './context.js';

/** `forky image ls | build`: guest images in the data directory, built from recipes in images/. */
export function registerImage(program: Command, cli: CliContext): void {
  const image = program.command('image').description('guest images');
  image
    .command('ls')
    .description('images built in the data directory')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const dir = path.join(cli.dataOf(cmd), 'images');
        const rows: Array<{ name: string; id: string; kernel: string }> = [];
        for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
          const m = await fs.readFile(path.join(dir, name, 'manifest.json'), 'utf8').then(
            (t) => JSON.parse(t) as { id: string; kernelVersion: string },
            () => undefined,
          );
          if (m) rows.push({ name, id: m.id, kernel: m.kernelVersion });
        }
        if (cli.json(cmd)) printJson(rows);
        else printTable(rows, ['name', 'id', 'kernel']);
      }),
    );
  image
    .command('build [name]')
    .description('build an image from its recipe in images/ (skipped when up to date)')
    .action(
      cli.action(async (name: string | undefined, _o: unknown, cmd: Command) => {
        const n = name ?? 'tiny';
        if (!/^[a-z0-9][a-z0-9_-]*$/.test(n)) throw new ValidationError(`invalid image name ${JSON.stringify(n)}`, { field: 'name' });
        const recipe = path.join(IMAGE_RECIPES, n, 'build.sh');
        await fs.access(recipe).catch(() => {
          throw new ForkyError('NOT_FOUND', `no recipe for image ${n} (${recipe})`);
        });
        const out = path.join(cli.dataOf(cmd), 'images');
        const env = { ...process.env, ...(process.stderr.isTTY ? {} : { FORKY_QUIET: '1' }) };
        await promisify(execFile)('bash', [recipe, out], { env, maxBuffer: 16 << 20 });
        const m = JSON.parse(await fs.readFile(path.join(out, n, 'manifest.json'), 'utf8')) as { id: string };
        if (cli.json(cmd)) printJson({ name: n, id: m.id });
        else process.stdout.write(`${n} ${m.id}\n`);
      }),
    );
}
