import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root: services/cli/dist/ is three levels down. */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const SCHEDULER_MAIN = path.join(REPO, 'services', 'scheduler', 'dist', 'main.js');
export const HOSTD_MAIN = path.join(REPO, 'services', 'hostd', 'dist', 'main.js');
export const IMAGE_RECIPES = path.join(REPO, 'images');

export function dataDirOf(opt: string | undefined): string {
  return path.resolve(opt ?? process.env.FORKY_DATA ?? '.forky');
}
