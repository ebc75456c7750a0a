import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { DeadlineError, delay } from '@forky/base';

/** Starts a process that outlives the CLI, its output in `logFile`. */
export function spawnDetached(cmd: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = process.env): number {
  const fd = fs.openSync(logFile, 'w');
  try {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd], env });
    child.unref();
    if (!child.pid) throw new Error(`could not start ${cmd}`);
    return child.pid;
  } finally {
    fs.closeSync(fd);
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** Waits for `pattern` in a log file the process writes; fails early if the process dies. */
export async function waitForLog(logFile: string, pattern: RegExp, pid: number, timeoutMs: number, what: string): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await fsp.readFile(logFile, 'utf8').catch(() => '');
    const m = pattern.exec(text);
    if (m) return m;
    if (!isAlive(pid)) throw new Error(`${what} exited: ${text.trim().split('\n').slice(-3).join(' | ') || 'no output'}`);
    if (Date.now() > deadline) throw new DeadlineError(what, timeoutMs);
    await delay(25);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
export async function stopProcess(pid: number, graceMs = 5000): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await delay(25);
  if (isAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    while (isAlive(pid)) await delay(25);
  }
}
