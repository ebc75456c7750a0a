/**
 * Fork figures of one host, through NATS, against the same guest cold-booted in the same run.
 *   npm run bench [-- --runs N] [--quick] [--json]
 * Prints a table (stderr when --json) and, with --json, one JSON array on stdout.
 */
import fs from 'node:fs/promises';
import { pollUntil } from '@forky/base';
import { startLocal } from './local.js';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || (args.includes('--quick') ? 3 : 5);
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const pssMB = async (pid: number): Promise<number> => {
  const t = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(t)?.[1] ?? NaN) / 1024;
};

interface Figure {
  name: string;
  value: number;
  unit: string;
  detail?: string;
}

const local = await startLocal();
const { client } = local;
const figures: Figure[] = [];
try {
  const accel = (await client.call('host.info', {})).accel;
  out(`forky bench: ${runs} runs each, accel=${accel}, 256 MiB guest`);

  const boots: number[] = [];
  for (let i = 0; i < runs; i++) {
    const [ms, vm] = await timed(() => client.call('vm.boot', { memMiB: 256 }));
    boots.push(ms);
    await client.call('vm.destroy', { id: vm.id });
  }

  const parent = await client.call('vm.boot', { memMiB: 256 });
  await client.call('vm.exec', { id: parent.id, cmd: ['/bin/sh', '-c', 'dd if=/dev/urandom of=/run/blob bs=1M count=32 2>/dev/null'] });
  const [snapMs, snap] = await timed(() => client.call('snapshot.create', { vm: parent.id, resume: true }));

  // Cold: the first fork of a snapshot (no process waits for it yet). Each run takes a new snapshot.
  const forks: number[] = [];
  for (let i = 0; i < runs; i++) {
    const fresh = await client.call('snapshot.create', { vm: parent.id, resume: true });
    const [ms, r] = await timed(() => client.call('fork', { source: fresh.id, count: 1 }));
    forks.push(ms);
    // The snapshot stays: the parent now runs on its memory.
    for (const c of r.children) await client.call('vm.destroy', { id: c.id });
  }
  // Warm: the snapshot was forked before, so its pool holds a process waiting for its state.
  await client
    .call('fork', { source: snap.id, count: 1 })
    .then((r) => Promise.all(r.children.map((c) => client.call('vm.destroy', { id: c.id }))));
  // The same, returning as soon as the child's vCPUs run (identity and agent follow).
  const warmRunning: number[] = [];
  const settleAfter: number[] = [];
  for (let i = 0; i < runs; i++) {
    await pollUntil(async () => (local.host.hostd.engine.warmCount(snap.id) > 0 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'pool refilled',
    });
    const [ms, r] = await timed(() => client.call('fork', { source: snap.id, count: 1, until: 'running' }));
    warmRunning.push(ms);
    // The first exec waits for the child to settle: it must still answer, with its own identity.
    const [settle] = await timed(() => client.call('vm.exec', { id: r.children[0]?.id as string, cmd: ['true'] }));
    settleAfter.push(settle);
    for (const c of r.children) await client.call('vm.destroy', { id: c.id });
  }
  const warmForks: number[] = [];
  for (let i = 0; i < runs; i++) {
    await pollUntil(async () => (local.host.hostd.engine.warmCount(snap.id) > 0 ? true : undefined), {
      timeoutMs: 30_000,
      what: 'pool refilled',
    });
    const [ms, r] = await timed(() => client.call('fork', { source: snap.id, count: 1 }));
    if (r.children[0]?.timings?.warm !== 1) throw new Error('the fork did not come from the pool');
    warmForks.push(ms);
    for (const c of r.children) await client.call('vm.destroy', { id: c.id });
  }

  // Live forks of a parent that keeps dirtying memory: the pause hostd measures, 10 at least.
  await client.call('vm.exec', {
    id: parent.id,
    cmd: [
      '/bin/sh',
      '-c',
      '(while true; do dd if=/dev/urandom of=/run/churn bs=64k count=16 2>/dev/null; usleep 50000; done) >/dev/null 2>&1 &',
    ],
  });
  const liveForks: number[] = [];
  const pauses: number[] = [];
  for (let i = 0; i < Math.max(runs, 10); i++) {
    const [ms, r] = await timed(() => client.call('fork', { source: parent.id, count: 1, resumeParent: true }));
    liveForks.push(ms);
    pauses.push(r.timings.pauseMs ?? NaN);
    for (const c of r.children) await client.call('vm.destroy', { id: c.id });
  }

  // The same work (32 MiB dirtied) before a snapshot of a parent and of a child of it.
  const dirty = ['/bin/sh', '-c', 'dd if=/dev/urandom of=/run/blob bs=1M count=32 2>/dev/null'];
  const snapParent: number[] = [];
  const snapChild: number[] = [];
  const pauseParent: number[] = [];
  const pauseChild: number[] = [];
  for (let i = 0; i < runs; i++) {
    await client.call('vm.exec', { id: parent.id, cmd: dirty });
    const [pm, ps] = await timed(() => client.call('snapshot.create', { vm: parent.id, resume: true }));
    const child = (await client.call('fork', { source: ps.id, count: 1 })).children[0];
    if (!child) throw new Error('fork gave no child');
    await client.call('vm.exec', { id: child.id, cmd: dirty });
    const [cm, cs] = await timed(() => client.call('snapshot.create', { vm: child.id, resume: true }));
    snapParent.push(pm);
    snapChild.push(cm);
    pauseParent.push(ps.timings?.pauseMs ?? NaN);
    pauseChild.push(cs.timings?.pauseMs ?? NaN);
    await client.call('vm.destroy', { id: child.id });
    await client.call('snapshot.delete', { id: cs.id });
  }

  const four: number[] = [];
  let pss: number[] = [];
  for (let i = 0; i < Math.max(1, Math.ceil(runs / 2)); i++) {
    const [ms, r] = await timed(() => client.call('fork', { source: snap.id, count: 4 }));
    four.push(ms);
    if (i === 0) {
      // Let the children settle (TCG refills its translation cache), then read what each costs.
      await Promise.all(r.children.map((c) => client.call('vm.exec', { id: c.id, cmd: ['true'] })));
      pss = await Promise.all(r.children.map((c) => pssMB(c.pid as number)));
    }
    for (const c of r.children) await client.call('vm.destroy', { id: c.id });
  }
  // Each snapshot hands the parent to a new process: ask for its pid now.
  const parentPss = await pssMB((await client.call('vm.show', { id: parent.id })).pid as number);

  figures.push(
    { name: 'cold boot to agent ready', value: median(boots), unit: 'ms', detail: boots.map(Math.round).join(' ') },
    { name: 'fork 1 child from snapshot to agent ready (cold)', value: median(forks), unit: 'ms', detail: forks.map(Math.round).join(' ') },
    { name: 'boot / fork ratio', value: median(boots) / median(forks), unit: 'x' },
    {
      name: 'fork 1 child from the warm pool to agent ready',
      value: median(warmForks),
      unit: 'ms',
      detail: warmForks.map(Math.round).join(' '),
    },
    { name: 'boot / warm fork ratio', value: median(boots) / median(warmForks), unit: 'x' },
    {
      name: 'fork 1 child from the warm pool to running (until: running)',
      value: median(warmRunning),
      unit: 'ms',
      detail: warmRunning.map(Math.round).join(' '),
    },
    { name: 'boot / warm fork-to-running ratio', value: median(boots) / median(warmRunning), unit: 'x' },
    {
      name: '  then the first exec (waits for identity + agent)',
      value: median(settleAfter),
      unit: 'ms',
      detail: settleAfter.map(Math.round).join(' '),
    },
    {
      name: 'live fork of a running VM (snapshot + child)',
      value: median(liveForks),
      unit: 'ms',
      detail: liveForks.map(Math.round).join(' '),
    },
    {
      name: 'live fork: parent pause (hostd pauseMs)',
      value: median(pauses),
      unit: 'ms',
      detail: pauses.map((p) => p.toFixed(1)).join(' '),
    },
    {
      name: 'snapshot of a parent (32 MiB dirtied), request',
      value: median(snapParent),
      unit: 'ms',
      detail: snapParent.map(Math.round).join(' '),
    },
    {
      name: 'snapshot of its child (32 MiB dirtied), request',
      value: median(snapChild),
      unit: 'ms',
      detail: snapChild.map(Math.round).join(' '),
    },
    { name: 'snapshot pause: parent', value: median(pauseParent), unit: 'ms', detail: pauseParent.map((p) => p.toFixed(1)).join(' ') },
    { name: 'snapshot pause: child', value: median(pauseChild), unit: 'ms', detail: pauseChild.map((p) => p.toFixed(1)).join(' ') },
    { name: 'fork 4 children from snapshot', value: median(four), unit: 'ms', detail: four.map(Math.round).join(' ') },
    { name: 'snapshot of a running VM (32 MiB dirtied)', value: snapMs, unit: 'ms' },
    { name: 'child Pss (median of 4, 256 MiB guest)', value: median(pss), unit: 'MB', detail: pss.map((p) => p.toFixed(1)).join(' ') },
    { name: 'parent Pss (256 MiB guest)', value: parentPss, unit: 'MB' },
    {
      name: 'snapshot state / RAM allocated',
      value: snap.sizes.stateBytes / 1024,
      unit: 'KiB',
      detail: `RAM ${(snap.sizes.ramBytes / 2 ** 20).toFixed(1)} MiB`,
    },
  );
} finally {
  await local.stop();
}

out('');
out(`${'figure'.padEnd(50)} ${'value'.padStart(10)}  unit  runs`);
for (const f of figures) out(`${f.name.padEnd(50)} ${f.value.toFixed(1).padStart(10)}  ${f.unit.padEnd(4)}  ${f.detail ?? ''}`);
if (json) process.stdout.write(JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 10) / 10 }))) + '\n');
