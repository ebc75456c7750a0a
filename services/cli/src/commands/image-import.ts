import fs from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { ForkyError, ValidationError } from '@forky/base';
import { printJson } from '../output.js';
import { IMAGE_RECIPES } from '../paths.js';
import { positiveInt, type CliContext } from './context.js';

/** A big image (gigabytes of layers) takes minutes to check, unpack and make a disk of; not forever. */
const IMPORT_TIMEOUT_MS = 30 * 60_000;
const NAME = /^[a-z0-9][a-z0-9_-]*$/;

/** import-image.sh's exit codes for a file it refuses: bad arguments, unreadable image, a member leaving the root. */
const REFUSED = new Set([2, 6, 7]);

/** The import script failed: its last words, and whether the file (not the machine) was at fault. */
export class ImageImportError extends ForkyError {
  override readonly name = 'ImageImportError';
  constructor(image: string, why: string, cause: unknown) {
    super('INTERNAL', `importing image ${image} failed: ${why}`, { cause });
  }
}

interface ImportOptions {
  disk?: number;
}

/** `forky image import NAME FILE`: a container image tarball (OCI layout, docker save, or a root file system) as a guest image. */
export function registerImageImport(image: Command, cli: CliContext): void {
  image
    .command('import <name> <file>')
    .description('import an OCI layout, `docker save` or root file system tarball as image NAME (adds our kernel, agent and init)')
    .option('--disk <GiB>', 'root disk size (default: the unpacked root plus headroom, whole GiB)', positiveInt('disk'))
    .action(
      cli.action(async (name: string, file: string, o: ImportOptions, cmd: Command) => {
        if (!NAME.test(name)) throw new ValidationError(`invalid image name ${JSON.stringify(name)}`, { field: 'name' });
        if (o.disk !== undefined && o.disk > 1024) throw new ValidationError('--disk must be 1..1024 GiB', { field: 'disk' });
        const abs = path.resolve(file);
        const st = await fs.stat(abs).catch(() => undefined);
        if (!st?.isFile()) throw new ValidationError(`no file ${file}`, { field: 'file' });
        const out = path.join(cli.dataOf(cmd), 'images');
        const args = [...(o.disk ? ['--disk', String(o.disk)] : []), name, abs, out];
        const env = { ...process.env, ...(process.stderr.isTTY ? {} : { FORKY_QUIET: '1' }) };
        const script = path.join(IMAGE_RECIPES, 'import-image.sh');
        await promisify(execFile)('bash', [script, ...args], { env, maxBuffer: 64 << 20, timeout: IMPORT_TIMEOUT_MS }).catch(
          (e: Error & { stderr?: string; killed?: boolean; code?: number }) => {
            if (e.killed) throw new ImageImportError(name, `timed out after ${IMPORT_TIMEOUT_MS / 60_000} min`, e);
            const why = (e.stderr ?? '').trim().split('\n').slice(-5).join('\n') || e.message;
            if (typeof e.code === 'number' && REFUSED.has(e.code)) throw new ValidationError(why, { field: 'file', exitCode: e.code });
            throw new ImageImportError(name, why, e);
          },
        );
        const m = JSON.parse(await fs.readFile(path.join(out, name, 'manifest.json'), 'utf8')) as { id: string; source?: unknown };
        if (cli.json(cmd)) printJson({ name, id: m.id, source: m.source });
        else process.stdout.write(`${name} ${m.id}\n`);
      }),
    );
}
