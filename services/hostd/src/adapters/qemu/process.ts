import fs from 'node:fs/promises';
import { openSync, closeSync } from 'node:fs';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { ForkyError, pollUntil, withDeadline, type Logger } from '@forky/base';
import { QmpClient } from '@forky/qemu';

export interface QemuProcess {
  pid: number;
  qmp: QmpClient;
  exited: Promise<void>;
  /** True once the process has exited. */
  readonly isExited: () => boolean;
}

/**
 * Starts QEMU and returns once it has dialled our QMP socket and negotiated. QEMU runs in its own
 * process group, detached, so a hostd restart does not take running VMs down with it.
 * If QEMU exits first, its own error message (from qemu.log) is the error.
 */
export async function launchQemu(
  binary: string,
  args: readonly string[],
  qmpSocket: string,
  logFile: string,
  timeoutMs: number,
  log: Logger,
  scope?: string,
  /** CPU niceness of QEMU (all its threads) and of its session's autogroup (launchCommand). */
  nice = 0,
): Promise<QemuProcess> {
  await fs.rm(qmpSocket, { force: true });
  const server = net.createServer();
  const connection = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(qmpSocket, resolve);
  });
  const logFd = openSync(logFile, 'a');
  let exited = false;
  try {
    const [cmd, argv] = launchCommand(binary, args, scope, nice);
    const child = spawn(cmd, argv, { stdio: ['ignore', logFd, logFd], detached: true });
    const pid = child.pid;
    const exitedP = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.once('exit', () => (exited = true));
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    child.unref();
    if (pid === undefined) throw new ForkyError('QEMU', `could not start ${binary}`);
    const early = exitedP.then(async () => {
      const tail = (await fs.readFile(logFile, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ');
      throw new ForkyError('QEMU', `QEMU exited during start: ${tail || 'no message'}`, { details: { pid } });
    });
    try {
      const sock = await withDeadline(Promise.race([connection, early, spawnError]), timeoutMs, 'QEMU start (QMP connect)');
      const qmp = await Promise.race([QmpClient.handshake(sock, { handshakeTimeoutMs: timeoutMs }), early]);
      log.debug({ pid }, 'qemu started');
      return { pid, qmp, exited: exitedP, isExited: () => exited };
    } catch (e) {
      // If QEMU is exiting on its own, its message says more than a closed socket does.
      const own = await withDeadline(early, 1000, 'QEMU exit').then(
        () => undefined,
        (err: unknown) => err,
      );
      killGroup(pid, 'SIGKILL');
      await withDeadline(exitedP, 5000, 'QEMU exit after failed start').catch(() => undefined);
      throw own instanceof ForkyError && own.code === 'QEMU' ? own : e;
    }
  } finally {
    closeSync(logFd);
    server.close();
    await fs.rm(qmpSocket, { force: true });
  }
}

/**
 * The command that becomes QEMU (same pid, by `exec`), in its own session (`detached`):
 * - `scope`: it joins that cgroup first (its VM's network filter selects packets by cgroup), so no
 *   packet of QEMU's is ever sent outside it; if it cannot join, QEMU does not start (exit 125, and
 *   the shell's message in qemu.log).
 * - `nice`: the session's autogroup gets it too. With autogroups on (Debian's default), a thread's
 *   nice counts only inside its autogroup, and each detached QEMU has one of its own, so `nice`
 *   alone left every guest the weight of hostd's whole session (measured here: a nice-10 spinner
 *   in its own session took 62% of a core against 36% for a nice-0 one). A kernel without
 *   autogroups has no such file, and the write is skipped.
 */
export function launchCommand(binary: string, args: readonly string[], scope: string | undefined, nice: number): [string, string[]] {
  if (!scope && nice <= 0) return [binary, [...args]];
  const join = scope ? 'echo 0 > "$1/cgroup.procs" || { echo "forky: cannot join cgroup $1" >&2; exit 125; }; ' : '';
  // Without CAP_SYS_ADMIN the kernel takes one such write per 100 ms (EAGAIN): tried for 1 s, then said in qemu.log.
  const group =
    nice > 0
      ? `g=0; until { echo ${nice} > /proc/self/autogroup; } 2>/dev/null; do g=$((g+1)); ` +
        'if [ $g -ge 10 ] || [ ! -e /proc/self/autogroup ]; then ' +
        '[ -e /proc/self/autogroup ] && echo "forky: the autogroup nice was not set; guests compete with hostd as equals" >&2; break; fi; ' +
        'sleep 0.1; done; '
      : '';
  const exec = nice > 0 ? ['nice', '-n', String(nice), binary, ...args] : [binary, ...args];
  return ['/bin/sh', ['-c', `${join}${group}shift; exec "$@"`, 'forky-qemu-launch', scope ?? '', ...exec]];
}

export function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  }
}

/**
 * A process we did not start (an earlier hostd did): no exit event reaches us, so its exit is
 * seen by polling, sooner once its QMP connection closes.
 */
export function watchProcess(pid: number, qmp: QmpClient): QemuProcess {
  let exited = false;
  const exitedP = new Promise<void>((resolve) => {
    const check = (): void => {
      if (pidAlive(pid)) return;
      clearInterval(timer);
      exited = true;
      resolve();
    };
    const timer = setInterval(check, 500);
    timer.unref();
    void qmp.closed.then(() => setTimeout(check, 50).unref());
  });
  return { pid, qmp, exited: exitedP, isExited: () => exited };
}

/** Kills a process group we may not own and waits (5 s at most) until it is gone. */
export async function killAndWait(pid: number): Promise<void> {
  killGroup(pid, 'SIGKILL');
  await pollUntil(async () => (pidAlive(pid) ? undefined : true), { timeoutMs: 5000, intervalMs: 20, what: `process ${pid} gone` }).catch(
    () => undefined,
  );
}

/** Signal 0: true while a process with this pid exists (ours or not). */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * QEMU processes whose sockets live under `vmsDir` (`-name forky-<vm>`, `qmp.<generation>.sock`):
 * the VMs of this host, found from /proc after a restart.
 */
export async function findQemuProcesses(vmsDir: string): Promise<Array<{ pid: number; vmId: string; generation: number }>> {
  const out: Array<{ pid: number; vmId: string; generation: number }> = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const args = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (t) => t.split('\0'),
      () => [] as string[],
    );
    const name = args[args.indexOf('-name') + 1];
    const vmId = /^forky-(vm-[a-z0-9]{12}),/.exec(name ?? '')?.[1];
    if (!vmId || args.indexOf('-name') < 0) continue;
    const qmp = args.find((a) => a.includes(`${vmsDir}/${vmId}/qmp.`));
    const generation = /\/qmp\.(\d+)\.sock/.exec(qmp ?? '')?.[1];
    if (generation === undefined) continue;
    out.push({ pid: Number(entry), vmId, generation: Number(generation) });
  }
  return out;
}
