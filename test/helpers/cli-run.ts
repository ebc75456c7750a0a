import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './repo.js';

export const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The CLI as a user runs it, one process per call, on the data directory `data()` names (read at
 * each call: tests make it in `before`): its exit code and output, never a throw for a failure.
 */
export function cliRunner(data: () => string) {
  const forky = async (args: string[], timeoutMs = 300_000): Promise<CliRun> => {
    try {
      const r = await promisify(execFile)(process.execPath, [CLI, ...args], {
        env: { ...process.env, FORKY_DATA: data() },
        timeout: timeoutMs,
        maxBuffer: 64 << 20,
      });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      const err = e as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof err.code === 'number' ? err.code : 1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
    }
  };
  /** `forky --json ARGS`, which must succeed, parsed. */
  const json = async <T>(args: string[]): Promise<T> => {
    const r = await forky(['--json', ...args]);
    assert.equal(r.code, 0, `forky ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  return { forky, json };
}
