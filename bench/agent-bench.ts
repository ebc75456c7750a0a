/**
 * The guest agent against today's qemu-ga exec, in the same run on the same idle VM, each through
 * NATS to one hostd: exec round trip of `true`, time to the first byte of output, and file
 * throughput in and out (a random file, 100 MiB unless --mib N).
 *   node bench/dist/agent-bench.js [--runs N] [--mib N] [--json]
 */
import { createHash, randomBytes } from 'node:crypto';
import { openStream, type ClientStream } from '@forky/bus';
import { subjects, type HostdEndpoint } from '@forky/contract';
import { startLocal } from './local.js';
import { median, timed } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 20;
const mib = Number(args[args.indexOf('--mib') + 1] || 0) || 100;
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');

const local = await startLocal();
const subject = (e: HostdEndpoint): string => subjects.host(local.host.hostId, e);

/** Drains a stream; the time its first output byte came (ms after `t0`) and what it printed. */
async function drain(s: ClientStream, t0: number): Promise<{ firstByteMs: number; bytes: number; hash: string; end: unknown }> {
  let firstByteMs = NaN;
  let bytes = 0;
  const hash = createHash('sha256');
  for await (const c of s) {
    if (c.kind === 'stdout' || c.kind === 'data') {
      if (Number.isNaN(firstByteMs)) firstByteMs = performance.now() - t0;
      bytes += c.bytes.length;
      hash.update(c.bytes);
    }
    if (c.kind === 'end') {
      s.close();
      return { firstByteMs, bytes, hash: hash.digest('hex'), end: c.end };
    }
  }
  throw new Error('stream ended without an end message');
}

const execStream = async (id: string, cmd: string[]): Promise<{ ms: number; firstByteMs: number }> => {
  const t0 = performance.now();
  const s = await openStream(local.nc, subject('exec.start'), { id, cmd });
  const r = await drain(s, t0);
  if ((r.end as { exitCode?: number }).exitCode !== 0) throw new Error(`${cmd.join(' ')}: ${JSON.stringify(r.end)}`);
  return { ms: performance.now() - t0, firstByteMs: r.firstByteMs };
};

try {
  const vm = await local.client.call('vm.boot', { memMiB: 256 });
  // Warm both paths up (first exec of a binary pages it in).
  await local.client.call('vm.exec', { id: vm.id, cmd: ['true'] });
  await execStream(vm.id, ['true']);

  const qgaTrue: number[] = [];
  const agentTrue: number[] = [];
  const qgaFirst: number[] = [];
  const agentFirst: number[] = [];
  for (let i = 0; i < runs; i++) {
    // Alternate, so drift in the machine's load falls on both alike.
    qgaTrue.push((await timed(() => local.client.call('vm.exec', { id: vm.id, cmd: ['true'] })))[0]);
    agentTrue.push((await execStream(vm.id, ['true'])).ms);
    // qemu-ga has no stream: its first byte comes with its whole reply.
    qgaFirst.push((await timed(() => local.client.call('vm.exec', { id: vm.id, cmd: ['echo', 'x'] })))[0]);
    agentFirst.push((await execStream(vm.id, ['echo', 'x'])).firstByteMs);
  }

  // File throughput: a random file in (file.write), then out (file.read), same sha256.
  const size = mib << 20;
  const file = randomBytes(size);
  const want = createHash('sha256').update(file).digest('hex');
  const tIn = performance.now();
  const w = await openStream(local.nc, subject('file.write'), { id: vm.id, path: '/tmp/bench.bin', mode: 'truncate' });
  const writing = drain(w, tIn);
  for (let off = 0; off < size; off += 1 << 20) await w.write(file.subarray(off, Math.min(size, off + (1 << 20))));
  await w.closeInput();
  await writing;
  const inMs = performance.now() - tIn;
  const tOut = performance.now();
  const rd = await drain(await openStream(local.nc, subject('file.read'), { id: vm.id, path: '/tmp/bench.bin' }), tOut);
  const outMs = performance.now() - tOut;
  if (rd.hash !== want || rd.bytes !== size) throw new Error(`read back ${rd.bytes} bytes, sha256 ${rd.hash}, want ${want}`);

  const figures = [
    { name: 'exec `true` round trip, forky-agent (p50)', value: median(agentTrue), unit: 'ms', runs: agentTrue },
    { name: 'exec `true` round trip, qemu-ga (p50)', value: median(qgaTrue), unit: 'ms', runs: qgaTrue },
    { name: 'exec round trip qemu-ga / forky-agent', value: median(qgaTrue) / median(agentTrue), unit: 'x', runs: [] as number[] },
    { name: 'first byte of `echo x`, forky-agent (p50)', value: median(agentFirst), unit: 'ms', runs: agentFirst },
    { name: 'first byte of `echo x`, qemu-ga (whole reply, p50)', value: median(qgaFirst), unit: 'ms', runs: qgaFirst },
    { name: `file in, ${mib} MiB random (file.write)`, value: mib / (inMs / 1000), unit: 'MiB/s', runs: [inMs] },
    { name: `file out, ${mib} MiB random (file.read)`, value: mib / (outMs / 1000), unit: 'MiB/s', runs: [outMs] },
  ];
  out(`${'figure'.padEnd(52)} ${'value'.padStart(8)}  unit   runs (ms)`);
  for (const f of figures)
    out(`${f.name.padEnd(52)} ${f.value.toFixed(1).padStart(8)}  ${f.unit.padEnd(5)}  ${f.runs.map(Math.round).join(' ')}`);
  if (json)
    process.stdout.write(
      JSON.stringify(figures.map((f) => ({ ...f, value: Math.round(f.value * 10) / 10, runs: f.runs.map(Math.round) }))) + '\n',
    );
  await local.client.call('vm.destroy', { id: vm.id });
} finally {
  await local.stop();
}
