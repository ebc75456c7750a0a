import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ip = (...args: string[]): Promise<unknown> => run('ip', args);

/** Kills whatever still runs in a test namespace, then removes it. */
async function removeNamespace(ns: string): Promise<void> {
  const pids = await run('ip', ['netns', 'pids', ns]).then(
    (r) => r.stdout.split('\n').filter(Boolean),
    () => [],
  );
  for (const p of pids) {
    try {
      process.kill(Number(p), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await ip('netns', 'del', ns).catch(() => undefined);
}

/** The first non-loopback IPv4 address of this host, on none of the test interfaces (all named `fk…`). */
export function hostAddress(): string {
  for (const [name, list] of Object.entries(os.networkInterfaces())) {
    if (name.startsWith('fk')) continue;
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  throw new Error('this machine has no non-loopback IPv4 address to test against');
}

export interface NetHost {
  ns: string;
  addr: string;
}

export interface TestNet {
  hosts: NetHost[];
  /** The bridge's address in the root namespace, where the test itself runs. */
  gateway: string;
  /** Starts a process inside a host's namespace, its output in `logFile`. */
  spawnIn(host: NetHost, cmd: string, args: string[], logFile: string, env?: NodeJS.ProcessEnv): ChildProcess;
  destroy(): Promise<void>;
}

/**
 * N test hosts, each its own network namespace with its own address on a bridge made for this
 * run (a private /24 of our own; nothing else is on it). destroy() kills whatever still runs in
 * the namespaces and removes them and the bridge.
 */
export async function createTestNet(n: number): Promise<TestNet> {
  const id = randomBytes(2).toString('hex');
  const subnet = `10.231.${randomInt(1, 250)}`;
  const bridge = `fkb${id}`;
  const hosts: NetHost[] = [];
  const made: string[] = [];
  const destroy = async (): Promise<void> => {
    for (const ns of made) await removeNamespace(ns);
    await ip('link', 'del', bridge).catch(() => undefined);
  };
  try {
    await ip('link', 'add', bridge, 'type', 'bridge');
    await ip('addr', 'add', `${subnet}.1/24`, 'dev', bridge);
    await ip('link', 'set', bridge, 'up');
    for (let i = 1; i <= n; i++) {
      const ns = `fk${id}n${i}`;
      const veth = `fkv${id}${i}`;
      const peer = `fkp${id}${i}`;
      await ip('netns', 'add', ns);
      made.push(ns);
      await ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', peer);
      await ip('link', 'set', peer, 'netns', ns);
      await ip('link', 'set', veth, 'master', bridge);
      await ip('link', 'set', veth, 'up');
      const addr = `${subnet}.${10 + i}`;
      await ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', peer);
      await ip('-n', ns, 'link', 'set', peer, 'up');
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      hosts.push({ ns, addr });
    }
  } catch (e) {
    await destroy();
    throw e;
  }
  return {
    hosts,
    gateway: `${subnet}.1`,
    spawnIn(host, cmd, args, logFile, env = process.env) {
      const fd = fs.openSync(logFile, 'w');
      try {
        return spawn('ip', ['netns', 'exec', host.ns, cmd, ...args], { stdio: ['ignore', fd, fd], env });
      } finally {
        fs.closeSync(fd);
      }
    },
    destroy,
  };
}

export interface VethNs {
  ns: string;
  /** The veth end in the root namespace (a stand-in for a VM's TAP: ≤ 15 characters, [a-z0-9]). */
  hostEnd: string;
  /** `hostEnd`'s address, the namespace's default route. */
  hostAddr: string;
  /** The namespace end's address. */
  nsAddr: string;
  /** The namespace end's MAC (what a TAP filter pins a VM's frames to). */
  nsMac: string;
  /** Starts a process inside the namespace. */
  spawn(cmd: string, args: string[]): ChildProcess;
  destroy(): Promise<void>;
}

/**
 * One network namespace joined to the root one by a veth pair on a private /24 of its own
 * (10.<random>.<random>.1 here, .2 there), routed through the root end. destroy() kills what
 * still runs in it and removes it (the veth goes with it).
 */
export async function createVethNs(): Promise<VethNs> {
  const id = randomBytes(3).toString('hex');
  const subnet = `10.${randomInt(120, 250)}.${randomInt(1, 250)}`;
  const ns = `fkvn${id}`;
  const hostEnd = `fkh${id}`;
  const nsEnd = `fkg${id}`;
  // Locally administered, unicast: the namespace end's MAC, as a VM's NIC has its own.
  const mac = `02:${randomBytes(5).toString('hex').match(/../g)?.join(':')}`;
  let made = false;
  const destroy = async (): Promise<void> => {
    if (made) await removeNamespace(ns);
    await ip('link', 'del', hostEnd).catch(() => undefined);
  };
  try {
    await ip('netns', 'add', ns);
    made = true;
    await ip('link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', nsEnd);
    await ip('link', 'set', nsEnd, 'netns', ns);
    await ip('addr', 'add', `${subnet}.1/24`, 'dev', hostEnd);
    await ip('link', 'set', hostEnd, 'up');
    await ip('-n', ns, 'link', 'set', nsEnd, 'address', mac);
    await ip('-n', ns, 'addr', 'add', `${subnet}.2/24`, 'dev', nsEnd);
    await ip('-n', ns, 'link', 'set', nsEnd, 'up');
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    await ip('-n', ns, 'route', 'add', 'default', 'via', `${subnet}.1`);
  } catch (e) {
    await destroy();
    throw e;
  }
  return {
    ns,
    hostEnd,
    hostAddr: `${subnet}.1`,
    nsAddr: `${subnet}.2`,
    nsMac: mac,
    spawn: (cmd, args) => spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }),
    destroy,
  };
}
