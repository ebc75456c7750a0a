import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/** The repository root (test/dist/helpers/ is three levels down). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const IMAGES_DIR = process.env.FORKY_IMAGES_DIR ?? path.join(REPO, '.forky', 'images');

/** Builds the tiny image if missing (a verified build is skipped by the script itself). */
export async function ensureImage(): Promise<string> {
  await promisify(execFile)('bash', [path.join(REPO, 'images', 'tiny', 'build.sh'), IMAGES_DIR], {
    env: { ...process.env, FORKY_QUIET: '1' },
    maxBuffer: 16 << 20,
  });
  return IMAGES_DIR;
}
