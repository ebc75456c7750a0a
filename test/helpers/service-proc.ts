import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pollUntil, withDeadline } from '@forky/base';
import type { HostdClient } from '@forky/bus';
import { IMAGES_DIR, REPO } from './repo.js';

export const HOSTD_MAIN = path.join(REPO, 'services', 'hostd', 'dist', 'main.js');
export const SCHEDULER_MAIN = path.join(REPO, 'services', 'scheduler', 'dist', 'main.js');

/** A service run as its own process, so a test can SIGKILL it the way a crash would. */
export interface ServiceProc {
  readonly child: ChildProcess;
  readonly log: string;
  /** Kills it with `signal` and waits for it to be gone. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `script` with `env`, logging to `log` (appended), and waits until `ready` says it serves
 * (a real answer, polled within a deadline). A process that exits first fails the wait.
 */
export async function spawnService(
  script: string,
  env: Record<string, string>,
  log: string,
  ready: () => Promise<boolean>,
  opts: { timeoutMs?: number } = {},
): Promise<ServiceProc> {
  const fd = openSync(log, 'a');
  const child = spawn(process.execPath, [script], { stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
  closeSync(fd);
  let exited: number | null | undefined;
  child.once('exit', (code) => (exited = code));
  try {
    await pollUntil(
      async () => {
        if (exited !== undefined) throw new Error(`${path.basename(script)} exited (${exited}) before it served; see ${log}`);
        return (await ready()) ? true : undefined;
      },
      { timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 100, what: `${path.basename(path.dirname(path.dirname(script)))} serving` },
    );
  } catch (e) {
    // A process that never served is this helper's to stop: left running, it would keep the test alive.
    if (exited === undefined) child.kill('SIGKILL');
    // The log's last lines say which step it was in; the test's temp directory may not outlive it.
    const tail = (await fs.readFile(log, 'utf8').catch(() => '')).trimEnd().split('\n').slice(-8).join('\n');
    throw new Error(`${(e as Error).message}\nlast lines of ${log}:\n${tail}`, { cause: e });
  }
  return {
    child,
    log,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill(signal);
      await withDeadline(gone, 10_000, `${path.basename(script)} stopped by ${signal}`);
    },
  };
}

/** The environment of a hostd process on its own data and RAM directories. */
export function hostdEnv(o: { hostId: string; natsUrl: string; dataDir: string; ramDir: string }): Record<string, string> {
  return {
    FORKY_HOST_ID: o.hostId,
    FORKY_NATS_URL: o.natsUrl,
    FORKY_DATA_DIR: o.dataDir,
    FORKY_RAM_DIR: o.ramDir,
    FORKY_IMAGES_DIR: IMAGES_DIR,
    FORKY_PROBE_CACHE: path.join(REPO, '.forky', 'accel-probe.json'),
    FORKY_LOG_LEVEL: 'info',
  };
}

/** The JSON lines of a service's log that have `msg`, oldest first. */
export async function logLines(log: string, msg: string): Promise<Array<Record<string, unknown>>> {
  const text = await fs.readFile(log, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((j) => j.msg === msg);
}

/** spawnService's readiness check for a hostd: it answers host.info (each try within 1 s). */
export const answersHostInfo = (client: HostdClient) => (): Promise<boolean> =>
  client.call('host.info', {}, { timeoutMs: 1000 }).then(
    () => true,
    () => false,
  );
