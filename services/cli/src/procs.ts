import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { DeadlineError, delay } from '@forky/base';
import { isAlive } from './pids.js';

/**
 * Starts a process that outlives the CLI, its output appended to `logFile` after a start line
 * (the log of a run that crashed must survive the restart). `from` is where this run's output begins.
 */
export function spawnDetached(
  what: string,
  cmd: string,
  args: string[],
  logFile: string,
  env: NodeJS.ProcessEnv = process.env,
): { pid: number; from: number } {
  const fd = fs.openSync(logFile, 'a');
  try {
    fs.writeSync(fd, `--- forky up: starting ${what} at ${new Date().toISOString()} ---\n`);
    const from = fs.fstatSync(fd).size;
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd], env });
    child.unref();
    if (!child.pid) throw new Error(`could not start ${cmd}`);
    return { pid: child.pid, from };
  } finally {
    fs.closeSync(fd);
  }
}

/** Waits for `pattern` in a log file the process writes, from byte `from` on; fails early if the process dies. */
export async function waitForLog(
  logFile: string,
  pattern: RegExp,
  pid: number,
  timeoutMs: number,
  what: string,
  from = 0,
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await fsp.readFile(logFile).catch(() => Buffer.alloc(0))).subarray(from).toString('utf8');
    const m = pattern.exec(text);
    if (m) return m;
    if (!isAlive(pid)) throw new Error(`${what} exited: ${text.trim().split('\n').slice(-3).join(' | ') || 'no output'}`);
    if (Date.now() > deadline) throw new DeadlineError(what, timeoutMs);
    await delay(25);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; true once the process is gone, false if it outlives SIGKILL by 5 s. */
export async function stopProcess(pid: number, graceMs = 5000): Promise<boolean> {
  if (!isAlive(pid)) return true;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return !isAlive(pid);
  }
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await delay(25);
  if (isAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    const killed = Date.now() + 5000;
    while (isAlive(pid) && Date.now() < killed) await delay(25);
  }
  return !isAlive(pid);
}
