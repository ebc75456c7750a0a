/**
 * The project's fork beside the raw QEMU floor and QEMU's own save/restore, in one run (issue 21, point 8).
 *   npm run bench:floor [-- --runs N] [--quick] [--many N] [--json]
 * floor: QEMU started by hand with the command line hostd gave a child (its /proc/<pid>/cmdline, on
 *   new sockets and a new overlay), fed the snapshot's device state; no NATS, no hostd.
 * peer: a guest booted by hand with the same devices on plain RAM, saved whole (`stop`, `migrate
 *   exec:cat > FILE`: QEMU 7.2 has no `file:`) and restored with `migrate-incoming exec:cat FILE`
 *   then `cont`, what `virsh save`/`virsh restore` do; for 1 child and 16 at once.
 * --many N: also the floor for N children at once, one run (issue 21's 100 children via the CLI).
 * "Answering" is qemu-ga replying to guest-sync-delimited on its socket, as hostd waits for it:
 * tiny's ttyS0 is an output-only console (no shell reads it). Overlays are made before the clock starts.
 */
import fs from 'node:fs/promises';
import { rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ForkyError, ValidationError, pollUntil } from '@forky/base';
import {
  DIRTY,
  MANY,
  floorChild,
  keptDirs,
  killGroup,
  overlay,
  peerArgs,
  peerChild,
  peerSave,
  procs,
  reap,
  restore,
  rewrite,
  roundDirs,
  templateOf,
  type Template,
} from './floor-qemu.js';
import { startLocal } from './local.js';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || (args.includes('--quick') ? 3 : 5);
const many = args.includes('--many') ? Number(args[args.indexOf('--many') + 1]) : 0;
if (!Number.isInteger(many) || many < 0 || many > 200)
  throw new ValidationError(`--many: an integer 0..200, not ${many}`, { field: 'many' });
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
interface Figure {
  name: string;
  value: number;
  unit: string;
  detail?: string;
}
const figures: Figure[] = [];
const load0 = os.loadavg()[0] as number;
const local = await startLocal();
const { client } = local;
// Interrupted: our QEMUs and files go first (synchronously), then hostd's.
const onSignal = (): void => {
  for (const p of procs) killGroup(p.pid);
  for (const d of [...roundDirs, ...keptDirs]) rmSync(d, { recursive: true, force: true });
  void local.stop().finally(() => process.exit(130));
};
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);
try {
  const accel = (await client.call('host.info', {})).accel;
  out(`forky floor bench: ${runs} runs each, accel=${accel}, 256 MiB tiny guest, load ${load0.toFixed(2)}`);
  const parent = await client.call('vm.boot', { memMiB: 256 });
  await client.call('vm.exec', { id: parent.id, cmd: DIRTY });
  const stateOf = (snap: string): string => path.join(local.host.dataDir, 'snapshots', snap, 'state.bin');

  /** The project's cold fork of `n` (a new snapshot each run); the command line of one child it made. */
  const projectFork = async (n: number): Promise<{ ms: number; t: Template; snap: string }> => {
    const snap = await client.call('snapshot.create', { vm: parent.id, resume: true });
    const [ms, r] = await timed(() => client.call('fork', { source: snap.id, count: n }));
    const child = r.children[0];
    if (!child?.pid || child.timings?.warm === 1) throw new ForkyError('INTERNAL', 'the fork gave no cold child with a pid');
    const t = await templateOf(child.pid);
    await Promise.all(r.children.map((c) => client.call('vm.destroy', { id: c.id })));
    // Its pool refills now: let that finish before QEMU is timed by hand.
    await pollUntil(async () => (local.host.hostd.engine.warmCount(snap.id) > 0 ? true : undefined), {
      timeoutMs: 60_000,
      what: 'pool refilled',
    });
    return { ms, t, snap: snap.id };
  };
  const floor = (n: number, t: Template, snap: string): Promise<number> =>
    restore(
      n,
      async (dir, i) => rewrite(t, dir, await overlay(dir, t.backing, t.owner), `floor-${i}`),
      (p) => floorChild(t, stateOf(snap), p),
      t.owner,
    );
  const peer = (n: number, t: Template, saved: { file: string; disk: string }): Promise<number> =>
    restore(
      n,
      async (dir, i) => peerArgs(rewrite(t, dir, await overlay(dir, saved.disk, t.owner), `peer-${i}`), t.memMiB, true),
      (p) => peerChild(t, saved.file, p),
      t.owner,
    );

  const first = await projectFork(1);
  const saved = await peerSave(first.t);
  const [project1, floor1, peer1, project16, floor16, peer16] = Array.from({ length: 6 }, () => [] as number[]) as [
    number[],
    number[],
    number[],
    number[],
    number[],
    number[],
  ];
  for (let i = 0; i < runs; i++) {
    const f = await projectFork(1);
    project1.push(f.ms);
    floor1.push(await floor(1, f.t, f.snap));
    peer1.push(await peer(1, f.t, saved));
  }
  let last = first;
  for (let i = 0; i < runs; i++) {
    const f = (last = await projectFork(MANY));
    project16.push(f.ms);
    floor16.push(await floor(MANY, f.t, f.snap));
    peer16.push(await peer(MANY, f.t, saved));
  }
  // Once, of the latest snapshot (still held): N QEMUs restoring at once on 2 cores take long.
  const floorMany = many > 0 ? [await floor(many, last.t, last.snap)] : [];

  const fig = (name: string, xs: number[]): Figure => ({ name, value: median(xs), unit: 'ms', detail: xs.map(Math.round).join(' ') });
  const ratio = (name: string, a: number[], b: number[]): Figure => ({ name, value: median(a) / median(b), unit: 'x' });
  figures.push(
    fig('project fork 1 child, request -> agent answering', project1),
    fig('raw QEMU floor 1 child, spawn -> qga answering', floor1),
    fig('QEMU save/restore 1 child, spawn -> qga answering', peer1),
    ratio('project fork / raw floor (1 child)', project1, floor1),
    ratio('project fork / QEMU save/restore (1 child)', project1, peer1),
    ratio('raw floor / QEMU save/restore (1 child)', floor1, peer1),
    fig(`project fork ${MANY} children, request -> all answering`, project16),
    fig(`raw QEMU floor ${MANY} children at once, until all answer`, floor16),
    fig(`QEMU save/restore ${MANY} children at once, until all answer`, peer16),
    ratio(`project fork / raw floor (${MANY} children)`, project16, floor16),
    ratio(`project fork / QEMU save/restore (${MANY} children)`, project16, peer16),
    ratio(`raw floor / QEMU save/restore (${MANY} children)`, floor16, peer16),
    ...(many > 0 ? [fig(`raw QEMU floor ${many} children at once, until all answer`, floorMany)] : []),
    { name: 'QEMU save of the peer (stop + migrate to file)', value: saved.saveMs, unit: 'ms' },
    { name: 'QEMU save file (whole RAM, zero pages skipped)', value: saved.bytes / 2 ** 20, unit: 'MiB' },
    { name: 'load average (1 min), start / end', value: load0, unit: '', detail: `end ${(os.loadavg()[0] as number).toFixed(2)}` },
  );
} finally {
  await reap().catch(() => undefined);
  await Promise.all([...keptDirs].map((d) => fs.rm(d, { recursive: true, force: true })));
  await local.stop();
}

out('');
out(`${'figure'.padEnd(58)} ${'value'.padStart(10)}  unit  runs`);
for (const f of figures) out(`${f.name.padEnd(58)} ${f.value.toFixed(2).padStart(10)}  ${f.unit.padEnd(4)}  ${f.detail ?? ''}`);
if (json) process.stdout.write(JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 100) / 100 }))) + '\n');
