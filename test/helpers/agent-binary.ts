import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { withDeadline } from '@forky/base';
import { REPO } from './repo.js';

export const AGENT_SRC = path.join(REPO, 'images', 'tiny', 'agent');
let built: Promise<string> | undefined;

/** Whether the agent's sources are in the tree (the real-agent tests skip without them). */
export async function agentSourcesPresent(): Promise<boolean> {
  return fs.access(path.join(AGENT_SRC, 'build.sh')).then(
    () => true,
    () => false,
  );
}

/**
 * Builds forky-agent for this host once per run, cached under .forky/cache/agent/ by the sha256
 * of its sources, so an unchanged agent is never rebuilt.
 */
export function agentBinary(): Promise<string> {
  built ??= (async () => {
    const hash = createHash('sha256');
    for (const name of (await fs.readdir(AGENT_SRC)).sort()) {
      const p = path.join(AGENT_SRC, name);
      if (!(await fs.stat(p)).isFile()) continue;
      hash
        .update(`${name}\0`)
        .update(await fs.readFile(p))
        .update('\0');
    }
    const dir = path.join(REPO, '.forky', 'cache', 'agent', hash.digest('hex').slice(0, 32));
    const out = path.join(dir, 'forky-agent');
    if (
      await fs.access(out).then(
        () => true,
        () => false,
      )
    )
      return out;
    await fs.mkdir(dir, { recursive: true });
    // Built beside, then renamed: a concurrent run never sees half a binary.
    const tmp = `${out}.${process.pid}.tmp`;
    await promisify(execFile)('bash', [path.join(AGENT_SRC, 'build.sh'), tmp], { maxBuffer: 16 << 20 });
    await fs.rename(tmp, out);
    return out;
  })();
  return built;
}

/**
 * The real agent run on this host, wired like a VM's: it connects (`--connect`) to a socket we
 * hold, and `hostSocket` plays QEMU's chardev, one host connection at a time, the guest's side
 * staying up between them (bytes with no host connected are dropped, as QEMU does).
 */
export class AgentHarness {
  #guest: net.Socket | undefined;
  #host: net.Socket | undefined;
  #servers: net.Server[] = [];
  #proc: ChildProcess | undefined;
  #binary = '';
  #onGuest: ((s: net.Socket) => void) | undefined;
  stderr = '';

  private constructor(readonly dir: string) {}

  get #guestPath(): string {
    return path.join(this.dir, 'guest.sock');
  }

  get hostSocket(): string {
    return path.join(this.dir, 'agent.sock');
  }

  get pid(): number {
    return this.#proc?.pid ?? 0;
  }

  static async start(binary: string, timeoutMs = 10_000): Promise<AgentHarness> {
    const h = new AgentHarness(await fs.mkdtemp(path.join(os.tmpdir(), 'fagentreal-')));
    h.#binary = binary;
    const guestServer = net.createServer((s) => h.#onGuest?.(s));
    const hostServer = net.createServer((s) => h.#attachHost(s));
    h.#servers.push(guestServer, hostServer);
    await new Promise<void>((r) => guestServer.listen(h.#guestPath, r));
    await new Promise<void>((r) => hostServer.listen(h.hostSocket, r));
    await h.#spawn(timeoutMs);
    return h;
  }

  /** Starts the agent and waits for it to connect; its bytes go to whichever host connection there is. */
  async #spawn(timeoutMs: number): Promise<void> {
    const guestConnected = new Promise<net.Socket>((r) => (this.#onGuest = r));
    // A process group of its own, so stop() can kill the agent and whatever it started.
    const proc = spawn(this.#binary, ['--connect', this.#guestPath], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    this.#proc = proc;
    proc.stderr?.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-8192)));
    const guest = await withDeadline(guestConnected, timeoutMs, 'forky-agent --connect');
    this.#guest = guest;
    guest.on('error', () => undefined);
    guest.on('data', (d: Buffer) => {
      const host = this.#host;
      if (host && !host.destroyed && !host.write(d)) {
        guest.pause();
        host.once('drain', () => guest.resume());
      }
    });
  }

  /**
   * Kills the agent and starts a new one, as a guest's init respawns an agent that died: the host
   * connection stays up (QEMU's chardev does not notice), and the new agent has had no HELLO.
   */
  async restart(timeoutMs = 10_000): Promise<void> {
    const old = this.#proc;
    if (old?.pid && old.exitCode === null && old.signalCode === null) {
      const exited = new Promise<void>((r) => old.once('exit', () => r()));
      process.kill(-old.pid, 'SIGKILL');
      await withDeadline(exited, 5000, 'forky-agent killed');
    }
    this.#guest?.destroy();
    await this.#spawn(timeoutMs);
  }

  #attachHost(s: net.Socket): void {
    this.#host?.destroy();
    this.#host = s;
    s.on('error', () => undefined);
    s.on('close', () => {
      if (this.#host === s) this.#host = undefined;
      this.#guest?.resume();
    });
    s.on('data', (d: Buffer) => {
      const guest = this.#guest;
      if (guest && !guest.destroyed && !guest.write(d)) {
        s.pause();
        guest.once('drain', () => s.resume());
      }
    });
  }

  async stop(): Promise<void> {
    const proc = this.#proc;
    // Closing its socket makes a --connect agent kill all it started (detached ones too) and exit;
    // SIGKILL to its group is only the fallback, as it would leave detached processes behind.
    this.#guest?.destroy();
    if (proc?.pid && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise<void>((r) => proc.once('exit', () => r()));
      await withDeadline(exited, 5000, 'forky-agent exit').catch(() => {
        try {
          process.kill(-(proc.pid as number), 'SIGKILL');
        } catch {
          // already gone
        }
      });
    }
    this.#guest?.destroy();
    this.#host?.destroy();
    for (const srv of this.#servers) await new Promise<void>((r) => srv.close(() => r()));
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}
