/**
 * `forky port` (issue 18): throughput of one big GET through the forward against the agent's own
 * file.read of the same file, and the latency a small GET pays through the forward against a
 * host-local HTTP server reached directly. nats-server, one hostd, a scheduler, one VM with
 * busybox httpd; the forwarder is the CLI as a user runs it (its own process).
 *   node bench/dist/port-bench.js [--runs N] [--mib N] [--gets N] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { pollUntil, withDeadline } from '@forky/base';
import { openStream } from '@forky/bus';
import { subjects } from '@forky/contract';
import { loadSchedulerConfig, startScheduler } from '@forky/scheduler';
import { createLogger } from '@forky/base';
import { REPO, startLocal } from './local.js';
import { median } from './stats.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const opt = (name: string, dflt: number): number => Number(args[args.indexOf(name) + 1] || 0) || dflt;
const runs = opt('--runs', 3);
const mib = opt('--mib', 100);
const gets = opt('--gets', 200);
const out = (s: string): boolean => (json ? process.stderr : process.stdout).write(s + '\n');
const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');

/** One GET on a fresh connection (keep-alive off, as each forwarded connection is one stream): ms, bytes, sha256. */
function get(port: number, p: string): Promise<{ ms: number; bytes: number; sha256: string; status: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      const h = createHash('sha256');
      let bytes = 0;
      res.on('data', (b: Buffer) => (h.update(b), (bytes += b.length)));
      res.on('end', () => resolve({ ms: performance.now() - t0, bytes, sha256: h.digest('hex'), status: res.statusCode ?? 0 }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(120_000, () => req.destroy(new Error(`GET ${p}: no answer within 120 s`)));
  });
}

async function forwarder(server: string, vm: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [CLI, '--server', server, '--json', 'port', vm, '8080', '--local', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FORKY_DATA: path.join(REPO, '.forky', 'bench-port') },
  });
  const line = await withDeadline(
    new Promise<string>((resolve) => {
      let s = '';
      child.stdout?.on('data', (b: Buffer) => (s += b.toString()).includes('\n') && resolve(s.split('\n')[0] as string));
    }),
    60_000,
    'forky port listening',
  );
  return { child, port: (JSON.parse(line) as { port: number }).port };
}

const local = await startLocal();
const sched = await startScheduler(
  loadSchedulerConfig({ nats: { servers: [local.nats.url] }, logLevel: 'warn' }),
  createLogger({ level: 'warn', name: 'bench' }),
);
let fwd: ChildProcess | undefined;
const direct = http.createServer((_req, res) => res.end('small\n'));
try {
  const vm = await local.client.call('vm.boot', { memMiB: 512 });
  const made = await local.client.call('vm.exec', {
    id: vm.id,
    cmd: [
      '/bin/sh',
      '-c',
      `mkdir -p /srv && dd if=/dev/urandom of=/srv/big bs=1M count=${mib} 2>/dev/null && echo small > /srv/small && sha256sum /srv/big`,
    ],
    timeoutMs: 120_000,
  });
  const want = made.stdout.trim().split(/\s+/)[0];
  const httpd = await openStream(local.nc, subjects.host(local.host.hostId, 'exec.start'), {
    id: vm.id,
    shell: 'exec httpd -f -p 8080 -h /srv',
    detach: true,
  });
  httpd.close();
  const f = await forwarder(local.nats.url, vm.id);
  fwd = f.child;
  await pollUntil(async () => ((await get(f.port, '/small').catch(() => undefined))?.status === 200 ? true : undefined), {
    timeoutMs: 30_000,
    intervalMs: 100,
    what: 'httpd answering through the forward',
  });
  await new Promise<void>((resolve) => direct.listen(0, '127.0.0.1', resolve));
  const directPort = (direct.address() as { port: number }).port;

  const through: number[] = [];
  const read: number[] = [];
  const p50Fwd: number[] = [];
  const p50Direct: number[] = [];
  const p50Open: number[] = [];
  for (let r = 0; r < runs; r++) {
    // The NATS and hostd part of a connection's cost: port.open answered (the guest's connect goes on after).
    const opens: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      const st = await openStream(local.nc, subjects.sched('port.open'), { id: vm.id, port: 8080 });
      opens.push(performance.now() - t0);
      st.cancel();
      for await (const c of st) if (c.kind === 'end') break;
    }
    p50Open.push(median(opens));
    const g = await get(f.port, '/big');
    if (g.sha256 !== want || g.bytes !== mib << 20) throw new Error(`GET /big: ${g.bytes} bytes, sha256 ${g.sha256}, want ${want}`);
    through.push(mib / (g.ms / 1000));
    const t0 = performance.now();
    let n = 0;
    for await (const c of await openStream(local.nc, subjects.host(local.host.hostId, 'file.read'), { id: vm.id, path: '/srv/big' }))
      if (c.kind === 'data') n += c.bytes.length;
    if (n !== mib << 20) throw new Error(`file.read gave ${n} bytes`);
    read.push(mib / ((performance.now() - t0) / 1000));
    // Alternated, so drift in the machine's load falls on both alike.
    const fw: number[] = [];
    const di: number[] = [];
    for (let i = 0; i < gets; i++) {
      fw.push((await get(f.port, '/small')).ms);
      di.push((await get(directPort, '/')).ms);
    }
    p50Fwd.push(median(fw));
    p50Direct.push(median(di));
  }
  const figures = [
    { name: `GET of ${mib} MiB through forky port`, value: median(through), unit: 'MiB/s', runs: through },
    { name: `file.read of the same ${mib} MiB (agent stream)`, value: median(read), unit: 'MiB/s', runs: read },
    { name: `small GET through forky port, p50 of ${gets}`, value: median(p50Fwd), unit: 'ms', runs: p50Fwd },
    { name: `small GET to a host-local server, p50 of ${gets}`, value: median(p50Direct), unit: 'ms', runs: p50Direct },
    { name: 'port.open answered through the scheduler, p50 of 50', value: median(p50Open), unit: 'ms', runs: p50Open },
    { name: 'latency the forward adds per small GET (p50)', value: median(p50Fwd) - median(p50Direct), unit: 'ms', runs: [] as number[] },
  ];
  out(`${'figure'.padEnd(52)} ${'value'.padStart(8)}  unit   runs`);
  for (const x of figures)
    out(`${x.name.padEnd(52)} ${x.value.toFixed(2).padStart(8)}  ${x.unit.padEnd(5)}  ${x.runs.map((v) => v.toFixed(2)).join(' ')}`);
  if (json)
    process.stdout.write(
      JSON.stringify(
        figures.map((x) => ({ ...x, value: Math.round(x.value * 100) / 100, runs: x.runs.map((v) => Math.round(v * 100) / 100) })),
      ) + '\n',
    );
  // The forwarder first: a connection still closing would end GONE with its VM, and say so.
  fwd.kill('SIGTERM');
  await local.client.call('vm.destroy', { id: vm.id });
} finally {
  fwd?.kill('SIGTERM');
  direct.close();
  await sched.stop();
  await local.stop();
}
