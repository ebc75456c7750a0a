import fs from 'node:fs/promises';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { ForkyError, ValidationError } from '@forky/base';
import { printJson } from '../output.js';
import { IMAGE_RECIPES } from '../paths.js';
import type { CliContext } from '../commands/context.js';

/** A big image (gigabytes of layers) takes minutes to check, unpack and make a disk of; not forever. */
const IMPORT_TIMEOUT_MS = 30 * 60_000;
/** After the deadline's SIGTERM, the script's cleanup (unmount, remove the work dir) gets this long before SIGKILL. */
const KILL_GRACE_MS = 10_000;
const NAME = /^[a-z0-9][a-z0-9_-]*$/;

/** import-image.sh's exit codes for a file it refuses: bad arguments, unreadable image, a member leaving the root. */
const REFUSED = new Set([2, 6, 7]);

/** The import script failed: its last words, and whether the file (not the machine) was at fault. */
export class ImageImportError extends ForkyError {
  override readonly name = 'ImageImportError';
  constructor(image: string, why: string, cause: unknown, code: 'INTERNAL' | 'TIMEOUT' = 'INTERNAL') {
    super(code, `importing image ${image} failed: ${why}`, { cause });
  }
}

interface ImportOptions {
  disk?: number;
}

interface ScriptRun {
  code: number | null;
  stderr: string;
  timedOut: boolean;
}

/** The deadline: FORKY_IMPORT_TIMEOUT_MS (tests), else 30 minutes. */
function importTimeoutMs(): number {
  const v = process.env.FORKY_IMPORT_TIMEOUT_MS;
  if (v === undefined || v === '') return IMPORT_TIMEOUT_MS;
  if (!/^[1-9][0-9]{0,8}$/.test(v))
    throw new ValidationError('FORKY_IMPORT_TIMEOUT_MS must be a whole number of ms', { field: 'FORKY_IMPORT_TIMEOUT_MS' });
  return Number(v);
}

/**
 * Runs the script in a process group of its own, so the deadline (or our own SIGINT/SIGTERM) stops
 * every step it started, not only bash: TERM to the group, KILL after a grace. Keeps stderr's tail.
 */
function runScript(script: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<ScriptRun> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [script, ...args], { env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let timedOut = false;
    let hard: NodeJS.Timeout | undefined;
    const kill = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // The group is gone already.
      }
    };
    const stop = (): void => {
      kill('SIGTERM');
      hard ??= setTimeout(() => kill('SIGKILL'), KILL_GRACE_MS);
    };
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, timeoutMs);
    process.once('SIGINT', stop).once('SIGTERM', stop);
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      if (process.stderr.isTTY) process.stderr.write(s);
      stderr = (stderr + s).slice(-(64 << 10));
    });
    const done = (): void => {
      clearTimeout(timer);
      if (hard) clearTimeout(hard);
      process.off('SIGINT', stop).off('SIGTERM', stop);
    };
    child.on('error', (e) => {
      done();
      reject(new ImageImportError(path.basename(script), e.message, e));
    });
    child.on('close', (code) => {
      done();
      resolve({ code, stderr, timedOut });
    });
  });
}

/** `forky image import NAME FILE`: a container image tarball (OCI layout, docker save, or a root file system) as a guest image. */
export async function importImage(cli: CliContext, name: string, file: string, o: ImportOptions, cmd: Command): Promise<void> {
  if (!NAME.test(name)) throw new ValidationError(`invalid image name ${JSON.stringify(name)}`, { field: 'name' });
  if (o.disk !== undefined && o.disk > 1024) throw new ValidationError('--disk must be 1..1024 GiB', { field: 'disk' });
  const abs = path.resolve(file);
  const st = await fs.stat(abs).catch(() => undefined);
  if (!st?.isFile()) throw new ValidationError(`no file ${file}`, { field: 'file' });
  const out = path.join(cli.dataOf(cmd), 'images');
  const args = [...(o.disk ? ['--disk', String(o.disk)] : []), name, abs, out];
  const env = { ...process.env, ...(process.stderr.isTTY ? {} : { FORKY_QUIET: '1' }) };
  const script = path.join(IMAGE_RECIPES, 'import-image.sh');
  const timeoutMs = importTimeoutMs();
  const r = await runScript(script, args, env, timeoutMs);
  if (r.timedOut) throw new ImageImportError(name, `timed out after ${timeoutMs} ms; its steps were stopped`, undefined, 'TIMEOUT');
  if (r.code !== 0) {
    const why = r.stderr.trim().split('\n').slice(-5).join('\n') || `import-image.sh exited with ${r.code ?? 'a signal'}`;
    if (r.code !== null && REFUSED.has(r.code)) throw new ValidationError(why, { field: 'file', exitCode: r.code });
    throw new ImageImportError(name, why, undefined);
  }
  const m = JSON.parse(await fs.readFile(path.join(out, name, 'manifest.json'), 'utf8')) as { id: string; source?: unknown };
  if (cli.json(cmd)) printJson({ name, id: m.id, source: m.source });
  else process.stdout.write(`${name} ${m.id}\n`);
}
