import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/** The repository root (test/dist/helpers/ is three levels down). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const IMAGES_DIR = process.env.FORKY_IMAGES_DIR ?? path.join(REPO, '.forky', 'images');
/** Where the image builds keep downloads per machine (images/image-cache.sh). */
export const IMAGE_CACHE_DIR =
  process.env.FORKY_IMAGE_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'forky-images');

/** A cold recipe build (debian) takes a minute or two; the deadline leaves room for a slow mirror. */
const BUILD_TIMEOUT_MS = 15 * 60_000;

/**
 * Builds image `name` if missing: tiny by its own script, any other from images/NAME/image.json by
 * the generic builder. A verified build with the same inputs is skipped by the script itself.
 */
export async function ensureImage(name = 'tiny'): Promise<string> {
  const script = name === 'tiny' ? [path.join(REPO, 'images', 'tiny', 'build.sh')] : [path.join(REPO, 'images', 'build-recipe.sh'), name];
  await promisify(execFile)('bash', [...script, IMAGES_DIR], {
    env: { ...process.env, FORKY_QUIET: '1' },
    maxBuffer: 64 << 20,
    timeout: BUILD_TIMEOUT_MS,
  });
  return IMAGES_DIR;
}
