import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Kvm } from '@nats-io/kv';
import { connectBus } from '@forky/bus';
import { pollUntil } from '@forky/base';
import type { VmInfo } from '@forky/contract';
import { ensureImageOnce, IMAGES_DIR, REPO } from '../helpers/repo.js';
import { isRunning, qemuPidsWhere } from '../helpers/procs.js';

const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}
interface Proc {
  role: string;
  pid: number;
  host?: string;
}
interface Up {
  server: string;
  processes: Proc[];
}

/** The wall-clock time of a nats-server log line (local time, microseconds). */
const natsTime = (line: string): number => {
  const m = /(\d{4})\/(\d\d)\/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3})/.exec(line);
  if (!m) return NaN;
  const [y, mo, d, h, mi, s, ms] = m.slice(1).map(Number) as [number, number, number, number, number, number, number];
  return new Date(y, mo - 1, d, h, mi, s, ms).getTime();
};

/** When a service (pino JSON log) last logged its NATS connection back. */
const reconnectedAt = async (log: string): Promise<number | undefined> => {
  const lines = (await fs.readFile(log, 'utf8')).split('\n').filter((l) => l.includes('"status":"reconnect"'));
  const last = lines.at(-1);
  return last ? (JSON.parse(last) as { time: number }).time : undefined;
};

describe('forky up / down on a running cluster, under faults', { timeout: 600_000 }, () => {
  let data: string;
  let ramRoot: string;
  let natsLogBefore = '';
  const seen = new Set<number>();
  const forky = async (args: string[], timeoutMs = 150_000): Promise<Run> => {
    const t0 = Date.now();
    try {
      const r = await promisify(execFile)(process.execPath, [CLI, ...args], {
        env: { ...process.env, FORKY_DATA: data },
        timeout: timeoutMs,
      });
      return { code: 0, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
    } catch (e) {
      const err = e as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof err.code === 'number' ? err.code : 1, stdout: err.stdout ?? '', stderr: err.stderr ?? '', ms: Date.now() - t0 };
    }
  };
  const json = async <T>(args: string[], timeoutMs?: number): Promise<T> => {
    const r = await forky(['--json', ...args], timeoutMs);
    assert.equal(r.code, 0, `forky ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const up = async (hosts: number): Promise<Up> => {
    const st = await json<Up>(['up', '--detach', '--hosts', String(hosts)]);
    st.processes.forEach((p) => seen.add(p.pid));
    return st;
  };
  const ofData = (cmd: string): boolean => cmd.includes(`${data}/`) || cmd.includes(`${ramRoot}/`);
  const killAndWait = async (pid: number): Promise<void> => {
    process.kill(pid, 'SIGKILL');
    await pollUntil(async () => ((await isRunning(pid)) ? undefined : true), {
      timeoutMs: 10_000,
      intervalMs: 20,
      what: `pid ${pid} gone`,
    });
  };

  before(async () => {
    await ensureImageOnce();
    data = await fs.mkdtemp(path.join(os.tmpdir(), 'fkclu-'));
    ramRoot = path.join('/dev/shm', `forky-${createHash('sha256').update(data).digest('hex').slice(0, 8)}`);
    await fs.symlink(IMAGES_DIR, path.join(data, 'images'));
    await fs.copyFile(path.join(REPO, '.forky', 'accel-probe.json'), path.join(data, 'accel-probe.json')).catch(() => undefined);
  });

  after(async () => {
    await forky(['down'], 60_000);
    // Whatever `down` left (it left VMs before issue 15) is this test's to stop.
    for (const pid of [...seen, ...(await qemuPidsWhere(ofData))]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await fs.rm(ramRoot, { recursive: true, force: true });
    await fs.rm(data, { recursive: true, force: true });
  });

  it('up --hosts 2 on a running cluster keeps JetStream on: both hosts report, KV works', async () => {
    const first = await up(1);
    const nats = first.processes.find((p) => p.role === 'nats');
    const second = await up(2);
    assert.equal(second.server, first.server);
    assert.equal(second.processes.find((p) => p.role === 'nats')?.pid, nats?.pid, 'the server reloaded its users, it did not restart');
    const hosts = await json<Array<{ id: string; alive: boolean }>>(['hosts']);
    assert.deepEqual(
      hosts
        .filter((h) => h.alive)
        .map((h) => h.id)
        .sort(),
      ['host-1', 'host-2'],
    );
    const authFile = (JSON.parse(await fs.readFile(path.join(data, 'cluster.json'), 'utf8')) as { authFile: string }).authFile;
    const nc = await connectBus({ servers: second.server, name: 'cluster-test', authFile });
    try {
      const kv = await new Kvm(nc).create('cluster_test');
      await kv.put('k', 'after the reload');
      assert.equal((await kv.get('k'))?.string(), 'after the reload');
    } finally {
      await nc.close();
    }
    const conf = JSON.parse(await fs.readFile(path.join(data, 'auth', 'nats.conf'), 'utf8')) as {
      port: number;
      jetstream?: { store_dir: string };
    };
    assert.equal(`nats://127.0.0.1:${conf.port}`, second.server, 'the config names the port the cluster uses');
    assert.ok(conf.jetstream?.store_dir, 'the config turns JetStream on');
  });

  it('req to a subject nobody serves fails at once with "no responders"; a served one answers', async () => {
    // The scheduler listens to heartbeats and never answers on them: the server sees interest.
    const took: string[] = [];
    for (const subject of ['forky.v1.hb.host-1', 'forky.v1.nobody.here', 'elsewhere.nobody']) {
      const r = await forky(['req', subject, '{}'], 15_000);
      assert.equal(r.code, 1, `${subject}: ${r.stderr}`);
      assert.match(r.stderr, /UNAVAILABLE: no responders/, subject);
      // The whole CLI run (node start, connect): the request itself is refused or answered at once.
      assert.ok(r.ms < 5000, `${subject} failed in ${r.ms} ms`);
      took.push(`${subject} ${r.ms} ms`);
    }
    process.stderr.write(`# req with no responders, whole CLI run: ${took.join(', ')}\n`);
    const bad = await forky(['req', 'two words', '{}'], 15_000);
    assert.equal(bad.code, 2, bad.stderr);
    const ok = await forky(['req', 'forky.v1.sched.hosts', '{}'], 15_000);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok((JSON.parse(ok.stdout) as { hosts: unknown[] }).hosts.length >= 1);
  });

  it('down with hostd and the scheduler killed leaves no QEMU of the data dir and no RAM file', async () => {
    // A cluster of its own, so this case does not depend on the ones before.
    await forky(['down'], 60_000);
    const st = await up(1);
    const vm = await json<VmInfo>(['vm', 'boot', '--mem', '128']);
    assert.equal(vm.state, 'running');
    const qemu = await qemuPidsWhere(ofData);
    assert.ok(qemu.length >= 1, 'the VM runs');
    for (const p of st.processes.filter((x) => x.role !== 'nats')) await killAndWait(p.pid);
    assert.deepEqual(await qemuPidsWhere(ofData), qemu, 'QEMU outlives hostd');
    const r = await forky(['down'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`killed ${qemu.length} QEMU process`));
    process.stderr.write(`# down with hostd gone: ${r.stdout}`);
    assert.deepEqual(await qemuPidsWhere(ofData), [], 'no QEMU of this data dir runs');
    assert.equal(
      await fs.access(ramRoot).then(
        () => 'exists',
        () => 'gone',
      ),
      'gone',
      'no RAM file is left',
    );
    assert.deepEqual((await json<{ processes: unknown[] }>(['status'])).processes, []);
  });

  it('nats-server killed: up restarts it on the same port, and hostd and the scheduler reconnect', async () => {
    const st = await up(2);
    const log = path.join(data, 'logs', 'nats.log');
    natsLogBefore = await fs.readFile(log, 'utf8');
    const nats = st.processes.find((p) => p.role === 'nats') as Proc;
    await killAndWait(nats.pid);
    const again = await up(2);
    assert.equal(again.server, st.server, 'same port');
    assert.notEqual(again.processes.find((p) => p.role === 'nats')?.pid, nats.pid);
    const services = (ps: Proc[]): string[] =>
      ps
        .filter((p) => p.role !== 'nats')
        .map((p) => `${p.role}:${p.pid}`)
        .sort();
    assert.deepEqual(services(again.processes), services(st.processes), 'the running services were left alone');
    // Through the scheduler to every hostd and back (the VM `down` killed above is no longer running).
    assert.deepEqual(
      (await json<VmInfo[]>(['vm', 'ls'])).filter((v) => v.state === 'running'),
      [],
    );
    const ready = natsTime(
      (await fs.readFile(log, 'utf8'))
        .split('\n')
        .filter((l) => l.includes('Server is ready'))
        .at(-1) ?? '',
    );
    const figures: string[] = [];
    for (const name of ['scheduler', 'hostd-host-1', 'hostd-host-2']) {
      // A request through the scheduler does not wait for every host (it gathers those that answer),
      // so a hostd may still be reconnecting: its log line is what says it did, within a deadline.
      const file = path.join(data, 'logs', `${name}.log`);
      const at = await pollUntil(() => reconnectedAt(file), { timeoutMs: 30_000, intervalMs: 100, what: `${name} logging its reconnect` });
      assert.ok(at !== undefined, `${name} logged its reconnect`);
      figures.push(`${name} ${at - ready} ms`);
    }
    process.stderr.write(`# reconnected after the nats-server restart (from its "Server is ready"): ${figures.join(', ')}\n`);

    // The port taken by something else while the services wait for it: up says so, at once.
    await killAndWait(again.processes.find((p) => p.role === 'nats')?.pid as number);
    // Once the server is gone its port is free for anyone, and something may hold it for a moment
    // (a reconnect attempt of a service that connected to itself, say): the test takes it as soon
    // as it is free, so that up meets a port held for as long as it runs.
    const port = Number(new URL(st.server).port);
    const squatter = await pollUntil(
      () =>
        new Promise<net.Server | undefined>((resolve, reject) => {
          const s = net.createServer();
          s.once('error', (e: NodeJS.ErrnoException) => (e.code === 'EADDRINUSE' ? resolve(undefined) : reject(e)));
          s.listen(port, '127.0.0.1', () => resolve(s));
        }),
      { timeoutMs: 10_000, intervalMs: 20, what: `port ${port} free to take` },
    );
    try {
      const r = await forky(['up', '--detach', '--hosts', '2'], 60_000);
      assert.equal(r.code, 1, `stdout: ${r.stdout}\nstderr: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`CONFLICT: port ${port}, where this cluster's hostd and scheduler reconnect, is taken`));
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  });

  it('a restart appends to the service logs, after a start line, instead of truncating them', async () => {
    const now = await fs.readFile(path.join(data, 'logs', 'nats.log'), 'utf8');
    assert.ok(natsLogBefore.includes('Server is ready'));
    assert.ok(now.startsWith(natsLogBefore), 'the earlier runs are still in the log');
    // Every start is there: the first cluster's, those after each `down`, the restart after the kill.
    const starts = (t: string): number => t.match(/Server is ready/g)?.length ?? 0;
    assert.ok(starts(natsLogBefore) >= 3, `${starts(natsLogBefore)} starts before the kill`);
    assert.equal(starts(now), starts(natsLogBefore) + 1);
    assert.match(now.slice(natsLogBefore.length), /^--- forky up: starting nats-server/);
  });
});
