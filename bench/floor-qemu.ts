/**
 * QEMU started by hand for floor-bench: a child's command line as hostd made it, moved onto new
 * sockets and overlays; the same machine on plain RAM saved whole and restored (the peer).
 * Every process and directory made here is tracked, so `reap` (and a signal) can take it all down.
 */
import fs from 'node:fs/promises';
import { closeSync, createReadStream, openSync } from 'node:fs';
import { execFile, spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { ForkyError, withDeadline } from '@forky/base';
import { GuestAgentClient, QmpClient, type QmpEvent } from '@forky/qemu';
import { timed } from './stats.js';

const sh = promisify(execFile);
/** Every wait on a QEMU of ours: 16 restoring at once on 2 TCG cores take seconds, a boot longer. */
export const WAIT_MS = 180_000;
export const MANY = 16;
export const DIRTY = ['/bin/sh', '-c', 'dd if=/dev/urandom of=/run/blob bs=1M count=32 2>/dev/null'];

export interface Owner {
  uid: number;
  gid: number;
}
/** A child's command line as hostd made it, and where its paths point. */
export interface Template {
  binary: string;
  args: string[];
  runDir: string;
  /** The snapshot's disk layer under the child's overlay, and the image's disk at the chain's root. */
  backing: string;
  root: string;
  memMiB: number;
  owner?: Owner;
}
export interface Proc {
  pid: number;
  exited: Promise<void>;
  /** Rejects with QEMU's own last words if it exits before we are done with it. */
  early: Promise<never>;
}
export interface Prepared {
  dir: string;
  args: string[];
}

export const procs = new Set<Proc>();
export const roundDirs = new Set<string>();
export const keptDirs = new Set<string>();

const arg = (a: string[], flag: string): string | undefined => (a.indexOf(flag) >= 0 ? a[a.indexOf(flag) + 1] : undefined);
const chardevPath = (a: string[], id: string): string => {
  const p = new RegExp(`^socket,id=${id},path=(.+?),server=`).exec(a.find((x) => x.startsWith(`socket,id=${id},`)) ?? '')?.[1];
  if (!p) throw new ForkyError('INTERNAL', `no ${id} socket on the command line`);
  return p.replaceAll(',,', ',');
};

export async function tempDir(owner: Owner | undefined, keep = false): Promise<string> {
  // Short: unix socket paths are limited to 107 bytes.
  const d = await fs.mkdtemp('/tmp/ffl-');
  (keep ? keptDirs : roundDirs).add(d);
  await fs.chmod(d, 0o711);
  if (owner) await fs.chown(d, owner.uid, owner.gid);
  return d;
}

export async function overlay(dir: string, backing: string, owner: Owner | undefined): Promise<string> {
  const file = path.join(dir, 'disk.qcow2');
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, file]);
  if (owner) await fs.chown(file, owner.uid, owner.gid);
  return file;
}

export async function templateOf(pid: number): Promise<Template> {
  const argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').slice(0, -1);
  const [binary, ...a] = argv;
  if (!binary?.includes('qemu-system')) throw new ForkyError('INTERNAL', `process ${pid} is not QEMU: ${binary}`);
  const disk0 = a.find((x) => x.includes('"node-name":"disk0"'));
  const disk = (JSON.parse(disk0 ?? '{}') as { file?: { filename?: string } }).file?.filename;
  if (!disk) throw new ForkyError('INTERNAL', 'no disk0 on the command line');
  const chain = JSON.parse((await sh('qemu-img', ['info', '--backing-chain', '--output=json', '-U', disk])).stdout) as Array<{
    filename: string;
    'full-backing-filename'?: string;
  }>;
  const runAs = arg(a, '-runas');
  let owner: Owner | undefined;
  if (runAs) {
    const line = (await fs.readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith(`${runAs}:`));
    const [, , uid, gid] = line?.split(':') ?? [];
    owner = { uid: Number(uid), gid: Number(gid) };
  }
  return {
    binary,
    args: a,
    runDir: path.dirname(chardevPath(a, 'qmp0')),
    backing: chain[0]?.['full-backing-filename'] ?? '',
    root: chain.at(-1)?.filename ?? '',
    memMiB: parseInt(arg(a, '-m') ?? '', 10),
    ...(owner ? { owner } : {}),
  };
}

/** The child's command line on `dir` and `disk`: every path of its run directory moves to `dir`. */
export function rewrite(t: Template, dir: string, disk: string, name: string): string[] {
  return t.args.flatMap((a, i) => {
    const prev = t.args[i - 1];
    // Autostart: a child from the warm pool waits stopped for a `cont` (-S).
    if (a === '-S') return [];
    if (prev === '-name') return [`${name},debug-threads=on`];
    if (prev === '-blockdev' && a.includes('"node-name":"disk0"')) {
      const b = JSON.parse(a) as { file: { filename: string } };
      b.file.filename = disk;
      return [JSON.stringify(b)];
    }
    if (prev === '-netdev' && a.startsWith('tap,')) return ['user,id=net0,restrict=on'];
    return [a.split(`${t.runDir}/`).join(`${dir}/`)];
  });
}

/**
 * The same machine on plain RAM, as a user without Forky Pig would run it; `exec:` migration needs
 * a shell. `-incoming defer` stays for a restore (libvirt's way too), goes for a boot.
 */
export function peerArgs(a: string[], memMiB: number, restoring: boolean): string[] {
  const o: string[] = [];
  for (let i = 0; i < a.length; i++) {
    const [k, v] = [a[i] as string, a[i + 1] ?? ''];
    if ((k === '-incoming' && !restoring) || (k === '-global' && v.startsWith('migration.'))) {
      i++;
      continue;
    }
    o.push(k);
    if (k === '-object' && v.startsWith('memory-backend-file,')) o.push(`memory-backend-ram,id=mem,size=${memMiB}M`);
    else if (k === '-sandbox') o.push(v.replace('spawn=deny', 'spawn=allow'));
    else continue;
    i++;
  }
  return o;
}

/** Starts QEMU; resolves once it has dialled its QMP socket (server=off), so its sockets exist. */
export async function spawnQemu(binary: string, p: Prepared): Promise<{ proc: Proc; sock: net.Socket }> {
  const qmpSocket = chardevPath(p.args, 'qmp0');
  const server = net.createServer();
  const conn = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(qmpSocket, resolve);
  });
  const log = path.join(p.dir, 'qemu.log');
  const fd = openSync(log, 'a');
  try {
    const child = spawn(binary, p.args, { stdio: ['ignore', fd, fd], detached: true });
    if (child.pid === undefined) throw new ForkyError('QEMU', `could not start ${binary}`);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const early = Promise.race([exited, new Promise((_, reject) => child.once('error', reject))]).then(async () => {
      const tail = (await fs.readFile(log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ');
      throw new ForkyError('QEMU', `QEMU (${p.dir}) exited: ${tail || 'no message'}`);
    });
    early.catch(() => undefined);
    const proc = { pid: child.pid, exited, early };
    procs.add(proc);
    return { proc, sock: await withDeadline(Promise.race([conn, early]), WAIT_MS, 'QEMU dials QMP') };
  } finally {
    closeSync(fd);
    server.close();
  }
}

/** Resolves when the guest's qemu-ga answers a sync, hostd's own test of a child answering. */
export async function answered(proc: Proc, p: Prepared): Promise<void> {
  const qga = await GuestAgentClient.connect(chardevPath(p.args, 'qga0'), WAIT_MS);
  try {
    await Promise.race([qga.sync(WAIT_MS), proc.early]);
  } finally {
    qga.close();
  }
}

/** The floor: hostd's steps for a cold child (QMP, migrate-incoming on a socket, the state streamed), by hand. */
export async function floorChild(t: Template, state: string, p: Prepared): Promise<void> {
  const { proc, sock } = await spawnQemu(t.binary, p);
  const qmp = await QmpClient.handshake(sock, { handshakeTimeoutMs: WAIT_MS });
  try {
    const mig = path.join(p.dir, 'mig.sock');
    await qmp.execute('migrate-incoming', { uri: `unix:${mig}` });
    // QEMU closes its end once it has read the whole stream, which can race our end (see hostd's migration.ts).
    void pipeline(createReadStream(state), net.createConnection(mig)).catch(() => undefined);
    await answered(proc, p);
  } finally {
    qmp.close();
  }
}

const ended = (e: QmpEvent): boolean => ['completed', 'failed', 'cancelled'].includes(String(e.data?.status));

/** The peer's restore as libvirt does it: the whole file through `exec:cat`, then `cont`. */
export async function peerChild(t: Template, file: string, p: Prepared): Promise<void> {
  const { proc, sock } = await spawnQemu(t.binary, p);
  const qmp = await QmpClient.handshake(sock, { handshakeTimeoutMs: WAIT_MS });
  try {
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const done = qmp.waitForEvent('MIGRATION', ended, WAIT_MS);
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${file}` });
    const ev = await Promise.race([done, proc.early]);
    if (ev.data?.status !== 'completed') throw new ForkyError('QEMU', `restoring the peer: ${String(ev.data?.status)}`);
    // It was saved stopped, so it loads stopped: QEMU keeps the source's run state.
    await qmp.execute('cont');
    await answered(proc, p);
  } finally {
    qmp.close();
  }
}

/** Prepares `n` children (dirs, overlays: not timed), then times spawn → the last one answering. */
export async function restore(
  n: number,
  prep: (dir: string, i: number) => Promise<string[]>,
  start: (p: Prepared) => Promise<void>,
  owner?: Owner,
) {
  const ps = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const dir = await tempDir(owner);
      return { dir, args: await prep(dir, i) };
    }),
  );
  const [ms] = await timed(() => Promise.all(ps.map(start)));
  await reap();
  return ms;
}

export function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* gone already */
  }
}

/** Kills every QEMU of ours (their whole groups: an `exec:` shell too) and removes the round's dirs. */
export async function reap(): Promise<void> {
  await Promise.all(
    [...procs].map(async (p) => {
      killGroup(p.pid);
      await withDeadline(p.exited, 10_000, `QEMU ${p.pid} exit`);
      procs.delete(p);
    }),
  );
  await Promise.all([...roundDirs].map((d) => fs.rm(d, { recursive: true, force: true })));
  roundDirs.clear();
}

/** Boots the peer's guest by hand, dirties it as the project's parent is, and saves it whole. */
export async function peerSave(t: Template): Promise<{ file: string; disk: string; bytes: number; saveMs: number }> {
  const dir = await tempDir(t.owner, true);
  const disk = await overlay(dir, t.root, t.owner);
  const p = { dir, args: peerArgs(rewrite(t, dir, disk, 'peer-parent'), t.memMiB, false) };
  const { proc, sock } = await spawnQemu(t.binary, p);
  const qmp = await QmpClient.handshake(sock, { handshakeTimeoutMs: WAIT_MS });
  try {
    await answered(proc, p);
    const qga = await GuestAgentClient.connect(chardevPath(p.args, 'qga0'), WAIT_MS);
    await qga.exec(DIRTY, { timeoutMs: WAIT_MS }).finally(() => qga.close());
    const file = path.join(dir, 'saved.bin');
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const done = qmp.waitForEvent('MIGRATION', ended, WAIT_MS);
    const [saveMs, ev] = await timed(async () => {
      await qmp.execute('stop');
      await qmp.execute('migrate', { uri: `exec:cat > ${file}` });
      return done;
    });
    if (ev.data?.status !== 'completed') throw new ForkyError('QEMU', `saving the peer's RAM: ${String(ev.data?.status)}`);
    return { file, disk, bytes: (await fs.stat(file)).size, saveMs };
  } finally {
    qmp.close();
    await reap();
  }
}
