import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import type { Command } from 'commander';
import { ForkyError, newId } from '@forky/base';
import { Files, spawn as spawnIn, type FileStat } from '@forky/sdk';
import { printJson, progress } from '../output.js';
import { parseCp, type CpPlan } from '../cp-args.js';
import type { Session } from '../session.js';
import {
  CHUNK,
  InterruptedError,
  Tail,
  abortOnInterrupt,
  exitCodeOf,
  exitOnInterrupt,
  runProcess,
  wasInterrupted,
  writeOut,
  type StreamEnd,
} from '../streams-io.js';
import { Untar } from '../untar.js';
import type { CliContext } from '../commands/context.js';

/** What Ctrl-C in a file copy says: the guest keeps what it had written, or we what we had read. */
const COPY_INTERRUPTED = 'cancelled (Ctrl-C); what was copied so far stays';

/** `forky cp SRC DST`: a file or a directory into a VM or out of it; one side is `VM:/path`. */
export async function cp(cli: CliContext, src: string, dst: string, _o: unknown, cmd: Command): Promise<void> {
  return exitOnInterrupt(async () => {
    const plan = parseCp(src, dst);
    const t0 = Date.now();
    const r = await cli.withSession(cmd, (s) => (plan.direction === 'in' ? copyIn(s, plan) : copyOut(s, plan)));
    const s = (Date.now() - t0) / 1000;
    if (cli.json(cmd)) printJson({ ...r, seconds: s });
    else if (r.bytes !== undefined)
      progress(`${r.bytes} bytes in ${s.toFixed(1)} s (${(r.bytes / 2 ** 20 / Math.max(s, 1e-3)).toFixed(1)} MiB/s)`);
  });
}

interface CpResult {
  kind: 'file' | 'dir';
  path: string;
  bytes?: number;
}

async function statRemote(s: Session, id: string, p: string): Promise<FileStat | undefined> {
  try {
    return await new Files(s, id).stat(p);
  } catch (e) {
    if (e instanceof ForkyError && e.code === 'NOT_FOUND') return undefined;
    throw e;
  }
}

const localDir = (p: string): Promise<boolean> =>
  fs.promises.stat(p).then(
    (st) => st.isDirectory(),
    () => false,
  );

async function copyIn(s: Session, plan: CpPlan): Promise<CpResult> {
  const { vm: id, remote } = plan;
  if (plan.local === '-') return { kind: 'file', path: remote, bytes: await writeRemote(s, id, remote, process.stdin, 0o644) };
  const st = await fs.promises.stat(plan.local);
  if (st.isDirectory()) return { kind: 'dir', path: remote, ...(await tarIn(s, id, plan.local, remote)) };
  // Into an existing directory, the file keeps its name (as cp and docker cp do).
  const dst = (await statRemote(s, id, remote))?.type === 'dir' ? path.posix.join(remote, path.basename(plan.local)) : remote;
  const src = fs.createReadStream(plan.local, { highWaterMark: CHUNK });
  return { kind: 'file', path: dst, bytes: await writeRemote(s, id, dst, src, st.mode & 0o777) };
}

async function copyOut(s: Session, plan: CpPlan): Promise<CpResult> {
  const { vm: id, remote } = plan;
  const st = await statRemote(s, id, remote);
  if (!st) throw new ForkyError('NOT_FOUND', `${id}:${remote}: no such file or directory`);
  if (st.type === 'dir') {
    if (plan.local === '-') throw new ForkyError('BAD_REQUEST', `${id}:${remote} is a directory; it cannot go to stdout`);
    return { kind: 'dir', ...(await tarOut(s, id, remote, plan.local)) };
  }
  if (plan.local === '-') return { kind: 'file', path: '-', bytes: await readRemote(s, id, remote, process.stdout) };
  const dst = (await localDir(plan.local)) ? path.join(plan.local, path.posix.basename(remote)) : plan.local;
  const out = fs.createWriteStream(dst, { mode: st.mode & 0o777 });
  try {
    const bytes = await readRemote(s, id, remote, out);
    await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
    return { kind: 'file', path: dst, bytes };
  } finally {
    out.destroy();
  }
}

/** Streams `src` into a file in the VM, within the host's credit: memory stays at a window, whatever the size. */
async function writeRemote(s: Session, id: string, p: string, src: AsyncIterable<Buffer | string>, perm: number): Promise<number> {
  const bytes = (b: Buffer | string): Buffer => (typeof b === 'string' ? Buffer.from(b) : b);
  const data = (async function* () {
    for await (const b of src) yield bytes(b);
  })();
  const w = { mode: 'truncate', perm, parents: false, key: newId('write', 16) } as const;
  return abortOnInterrupt(async (signal) => (await new Files(s, id).write(p, data, { ...w, signal })).bytes, COPY_INTERRUPTED);
}

async function readRemote(s: Session, id: string, p: string, out: NodeJS.WritableStream): Promise<number> {
  return abortOnInterrupt(async (signal) => {
    let n = 0;
    for await (const b of new Files(s, id).stream(p, { signal })) {
      await writeOut(out, b);
      n += b.length;
    }
    return n;
  }, COPY_INTERRUPTED);
}

/** A local tar and its outcome: its exit code and the end of what it said on stderr. */
function localTar(args: string[], stdio: ['ignore', 'pipe', 'pipe']) {
  const child = spawn('tar', args, { stdio });
  const err = new Tail();
  child.stderr?.on('data', (b: Buffer) => err.push(b));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(new ForkyError('INTERNAL', `local tar: ${e.message}`, { cause: e })));
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new ForkyError('INTERNAL', `local tar ${args.join(' ')} exited ${code}: ${err.text()}`)),
    );
  });
  done.catch(() => undefined);
  return { child, done };
}

/** Fails with (the end of) the guest command's stderr when it did not exit 0; Ctrl-C is an InterruptedError. */
function guestOk(r: { end: StreamEnd; interrupted: boolean }, what: string, stderr: Tail): void {
  if (wasInterrupted(r.end, r.interrupted)) throw new InterruptedError();
  const code = exitCodeOf(r.end, r.interrupted);
  if (code !== 0) throw new ForkyError('INVALID_STATE', `${what} in the guest exited ${code}: ${stderr.text()}`);
}

/** A directory in: local `tar -c` into the guest's `tar -x` (busybox), through an exec's stdin. */
async function tarIn(s: Session, id: string, local: string, remote: string): Promise<{ bytes: number }> {
  const tar = localTar(['-C', local, '-cf', '-', '.'], ['ignore', 'pipe', 'pipe']);
  // Read from now on: node drops what a child wrote to an unread pipe once it exits. The pipe pauses tar when full.
  const archive = (tar.child.stdout as Readable).pipe(new PassThrough({ highWaterMark: CHUNK }));
  const cmd = ['sh', '-c', 'mkdir -p "$1" && tar -C "$1" -xf -', 'sh', remote];
  const p = await spawnIn(s, id, cmd, { env: {}, stdin: true, timeoutMs: 0, key: newId('cp', 16) });
  const stderr = new Tail();
  let bytes = 0;
  const counted = (async function* () {
    for await (const b of archive as AsyncIterable<Buffer>) yield ((bytes += b.length), b);
  })();
  const r = await runProcess(p, Object.assign(counted, { destroy: () => tar.child.kill() }), (kind, b) => {
    if (kind === 'stderr') stderr.push(b);
  });
  guestOk(r, 'tar -x', stderr);
  await tar.done;
  return { bytes };
}

/**
 * Where a directory out goes: DST if it does not exist, DST/<name of the guest's directory> if DST is a
 * directory; that must not exist either (a fresh directory, so nothing in it is anyone else's, or a symlink).
 */
async function freshDir(local: string, remote: string): Promise<string> {
  const st = await fs.promises.stat(local).catch(() => undefined);
  if (st && !st.isDirectory()) throw new ForkyError('CONFLICT', `${local} exists and is not a directory`);
  const base = path.posix.basename(remote);
  if (st && (base === '' || base === '..')) throw new ForkyError('BAD_REQUEST', `cp ${remote}: name a destination that does not exist yet`);
  const dst = st ? path.join(local, base) : local;
  if (
    await fs.promises.lstat(dst).then(
      () => true,
      () => false,
    )
  )
    throw new ForkyError('CONFLICT', `${dst} exists: a directory is copied out into a new one`);
  await fs.promises.mkdir(path.dirname(dst), { recursive: true });
  await fs.promises.mkdir(dst).catch((e: unknown) => Promise.reject(new ForkyError('CONFLICT', `${dst} exists`, { cause: e })));
  return dst;
}

/**
 * A directory out: the guest's `tar -c` into our own extractor (untar.ts), not a local tar, which
 * would follow symlinks already there and keep devices, setuid bits and owners. It writes at its pace.
 */
async function tarOut(s: Session, id: string, remote: string, local: string): Promise<{ path: string; bytes: number }> {
  const dst = await freshDir(local, remote);
  const untar = new Untar(dst, (line) => writeOut(process.stderr, Buffer.from(`${line}\n`)));
  const p = await spawnIn(s, id, ['tar', '-C', remote, '-cf', '-', '.'], { env: {}, timeoutMs: 0, key: newId('cp', 16) });
  const stderr = new Tail();
  try {
    const r = await runProcess(p, undefined, async (kind, b) => {
      if (kind === 'stderr') stderr.push(b);
      else await untar.write(b);
    });
    guestOk(r, 'tar -c', stderr);
    await untar.end();
  } catch (e) {
    p.kill();
    throw e;
  } finally {
    await untar.close();
  }
  return { path: dst, bytes: untar.result.bytes };
}
