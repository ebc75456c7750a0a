import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
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

/**
 * ensureImage, at most once per image in a run of `node test/select.mjs`: it names a directory for
 * the run (FORKY_TEST_RUN_DIR), and the first file that needs the image checks it there; the files
 * after it find its stamp. The check alone takes 5–8 s (build.sh asks apt-cache for every package and
 * hashes every part). Outside such a run it is ensureImage.
 */
export async function ensureImageOnce(name = 'tiny'): Promise<string> {
  const run = process.env.FORKY_TEST_RUN_DIR;
  if (!run || !/^[a-z0-9-]{1,64}$/.test(name)) return ensureImage(name);
  const stamp = path.join(run, `image-${name}-${createHash('sha256').update(IMAGES_DIR).digest('hex').slice(0, 12)}.ok`);
  if (
    await fs.access(stamp).then(
      () => true,
      () => false,
    )
  )
    return IMAGES_DIR;
  const dir = await ensureImage(name);
  await fs.writeFile(stamp, '').catch(() => undefined); // no stamp: the next file checks again
  return dir;
}
