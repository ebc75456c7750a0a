import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { connectBus } from '@forky/bus';
import { Kvm } from '@nats-io/kv';
import { withDeadline } from '@forky/base';
import type { ForkResult, VmInfo } from '@forky/contract';
import { cliRunner } from '../helpers/cli-run.js';
import { ensureImageOnce, IMAGES_DIR, REPO } from '../helpers/repo.js';
import { isRunning, qemuPidsOf } from '../helpers/procs.js';

const SCHEDULER = path.join(REPO, 'services', 'scheduler', 'dist', 'main.js');

describe('the forky CLI against a local cluster, as a new user would', { timeout: 600_000 }, () => {
  let data: string;
  let server: string;
  const { forky, json } = cliRunner(() => data);

  before(async () => {
    await ensureImageOnce();
    data = await fs.mkdtemp(path.join(os.tmpdir(), 'fkcli-'));
    // Share the built image and the accelerator probe of this run instead of redoing them.
    await fs.symlink(IMAGES_DIR, path.join(data, 'images'));
    await fs.copyFile(path.join(REPO, '.forky', 'accel-probe.json'), path.join(data, 'accel-probe.json')).catch(() => undefined);
  });

  after(async () => {
    await forky(['down']);
    await fs.rm(data, { recursive: true, force: true });
  });

  it('up --detach starts nats, a scheduler and a host, and returns once the host reported in', async () => {
    const st = await json<{ server: string; processes: Array<{ role: string; pid: number; host?: string }> }>(['up', '--detach']);
    server = st.server;
    assert.match(server, /^nats:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(st.processes.map((p) => p.role).sort(), ['hostd', 'nats', 'scheduler']);
    const hosts = await json<Array<{ id: string; alive: boolean; accel: string; memTotalMiB: number }>>(['hosts']);
    assert.equal(hosts.length, 1);
    assert.equal(hosts[0]?.alive, true);
    assert.ok((hosts[0]?.memTotalMiB ?? 0) > 0);
    const again = await json<{ processes: Array<{ pid: number }> }>(['up', '--detach']);
    assert.deepEqual(again.processes.map((p) => p.pid).sort(), st.processes.map((p) => p.pid).sort(), 'up again leaves what runs alone');
    const status = await json<{ server: string; processes: unknown[] }>(['status']);
    assert.equal(status.server, server);
    assert.equal(status.processes.length, 3);
  });

  let parent: VmInfo;
  let fork: ForkResult;

  it('boots, execs, forks 4, lists and removes VMs through --json', async () => {
    parent = await json<VmInfo>(['vm', 'boot']);
    assert.equal(parent.state, 'running');
    const ex = await json<{ exitCode: number; stdout: string }>([
      'vm',
      'exec',
      parent.id,
      '--',
      'sh',
      '-c',
      'echo forked-from > /run/origin; cat /proc/sys/kernel/random/boot_id',
    ]);
    assert.equal(ex.exitCode, 0);
    const bootId = ex.stdout.trim();
    const plain = await forky(['vm', 'exec', parent.id, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(plain.code, 7, 'exec exits with the command exit code');
    assert.equal(plain.stdout, 'out\n');
    assert.equal(plain.stderr, 'err\n');

    fork = await json<ForkResult>(['fork', parent.id, '--count', '4']);
    assert.equal(fork.children.length, 4);
    for (const c of fork.children) {
      const r = await json<{ stdout: string }>(['vm', 'exec', c.id, '--', 'cat', '/proc/sys/kernel/random/boot_id', '/run/origin']);
      assert.equal(r.stdout, `${bootId}\nforked-from\n`);
    }
    const ls = await json<VmInfo[]>(['vm', 'ls']);
    assert.deepEqual(ls.map((v) => v.id).sort(), [parent.id, ...fork.children.map((c) => c.id)].sort());

    const rm = await json<VmInfo[]>(['vm', 'rm', ...fork.children.slice(0, 2).map((c) => c.id)]);
    assert.deepEqual(
      rm.map((v) => v.state),
      ['destroyed', 'destroyed'],
    );
    assert.deepEqual(await qemuPidsOf(fork.children.slice(0, 2).map((c) => c.id)), []);
    assert.equal((await json<VmInfo[]>(['vm', 'ls'])).length, 3);
  });

  it('says what went wrong on stderr with a non-zero exit', async () => {
    const r = await forky(['vm', 'show', 'vm-aaaaaaaaaaaa']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /NOT_FOUND: VM "vm-aaaaaaaaaaaa" not found/);
    assert.equal(r.stdout, '');
    const bad = await forky(['fork', parent.id, '--count', '0']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /count/);
  });

  it('vm exec --timeout: a command that outlives it exits 124, says TIMEOUT and ran exactly once', async () => {
    // The parent stays paused after its fork: a running child does the exec.
    const vm = fork.children[2] as VmInfo;
    const t0 = Date.now();
    const r = await forky(['vm', 'exec', vm.id, '--timeout', '2000', '--', 'sh', '-c', 'echo run >> /tmp/runs; sleep 5']);
    const ms = Date.now() - t0;
    assert.equal(r.code, 124, r.stderr);
    assert.match(r.stderr, /TIMEOUT/);
    assert.doesNotMatch(r.stderr, /retrying/, "the exec's own timeout is its end, not a lost reply");
    const runs = await json<{ stdout: string }>(['vm', 'exec', vm.id, '--', 'cat', '/tmp/runs']);
    assert.equal(runs.stdout, 'run\n', 'the command ran once');
    process.stderr.write(
      `# exec --timeout 2000 of a 5 s command: failed after ${ms} ms; /tmp/runs has ${runs.stdout.split('\n').length - 1} line\n`,
    );
    // The old spelling still works.
    const old = await forky(['vm', 'exec', vm.id, '--exec-timeout', '2000', '--', 'sleep', '5']);
    assert.equal(old.code, 124);
    assert.match(old.stderr, /TIMEOUT/);
  });

  it('vm app --app DIR:/mnt gives a running VM a host directory; a bad mount point is refused', async () => {
    const vm = fork.children[3] as VmInfo;
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkcli-app-'));
    try {
      await fs.writeFile(path.join(dir, 'f.txt'), 'from the host\n');
      const v = await json<VmInfo>(['vm', 'app', vm.id, '--app', `${dir}:/opt/x`]);
      assert.deepEqual(
        v.apps?.map((a) => a.mount),
        ['/opt/x'],
      );
      assert.equal((await json<{ stdout: string }>(['vm', 'exec', vm.id, '--', 'cat', '/opt/x/f.txt'])).stdout, 'from the host\n');
      const bad = await forky(['vm', 'app', vm.id, '--app', `${dir}:/etc/x`]);
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, /mount point \/etc\/x may not be or be under/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a JSON request built by hand reaches a fork and returns JSON', async () => {
    const r = await forky(['req', 'forky.v1.sched.fork', JSON.stringify({ source: fork.snapshot.id, count: 1 })]);
    assert.equal(r.code, 0, r.stderr);
    const reply = JSON.parse(r.stdout) as ForkResult;
    assert.equal(reply.children.length, 1);
    assert.equal(reply.children[0]?.parentSnapshot, fork.snapshot.id);
  });

  it('two schedulers side by side: killing one mid-batch loses no request and duplicates no child', async () => {
    // `forky up` made users by default: the second scheduler and this test use theirs.
    const authDir = path.join(data, 'auth');
    const cluster = JSON.parse(await fs.readFile(path.join(data, 'cluster.json'), 'utf8')) as { authFile?: string };
    assert.equal(cluster.authFile, path.join(authDir, 'operator.json'));
    await assert.rejects(
      connect({ servers: server, reconnect: false }),
      /Authorization/i,
      'the local cluster refuses a client without credentials',
    );
    const second = spawn(process.execPath, [SCHEDULER, '--nats', server, '--log-level', 'warn'], {
      stdio: 'ignore',
      env: { ...process.env, FORKY_NATS_AUTH_FILE: path.join(authDir, 'scheduler.json') },
    });
    const secondExit = new Promise<void>((r) => second.once('exit', () => r()));
    let opened: NatsConnection | undefined;
    try {
      const nc = await connectBus({ servers: server, name: 'cli-test', authFile: cluster.authFile });
      opened = nc;
      const requests = await new Kvm(nc).open('forky_requests');
      // Wait until the second scheduler has joined the queue group.
      await withDeadline(
        (async () => {
          for (;;) {
            const infos = await nc.requestMany('$SRV.PING.forky-scheduler', new Uint8Array(), { maxWait: 500 });
            let n = 0;
            for await (const _m of infos) n++;
            if (n >= 2) return;
          }
        })(),
        20_000,
        'second scheduler',
      );
      const before = (await json<VmInfo[]>(['vm', 'ls'])).length;
      const batchFile = path.join(data, 'batch.json');
      await fs.writeFile(batchFile, JSON.stringify([1, 2, 3, 4].map(() => ({ source: fork.snapshot.id, count: 1 }))));
      const batches = [1, 2, 3, 4].map(() => forky(['--json', '--request-timeout', '15000', 'batch', 'submit', batchFile]));
      // Kill the first scheduler once every batch is claimed by one of the two (a fast batch may
      // already be done by then: it counts as claimed, and is not retried).
      await withDeadline(
        (async () => {
          for (;;) {
            let claimed = 0;
            for await (const k of await requests.keys())
              if (k.startsWith('batch-') && (await requests.get(k))?.operation === 'PUT') claimed++;
            if (claimed >= 4) return;
            await new Promise((r) => setTimeout(r, 20));
          }
        })(),
        60_000,
        'batches claimed',
      );
      const st = await json<{ processes: Array<{ role: string; pid: number }> }>(['status']);
      const first = st.processes.find((p) => p.role === 'scheduler');
      assert.ok(first);
      const onFirst: string[] = [];
      for await (const k of await requests.keys()) {
        const e = await requests.get(k);
        const v = e?.operation === 'PUT' ? e.json<{ state: string; owner: string }>() : undefined;
        if (k.startsWith('batch-') && v?.state === 'pending' && v.owner.endsWith(`-pid${first.pid}`)) onFirst.push(k);
      }
      process.kill(first.pid, 'SIGKILL');

      const runs = await Promise.all(batches);
      const retried = runs.filter((r) => /retrying/.test(r.stderr)).length;
      for (const r of runs) assert.equal(r.code, 0, r.stderr);
      const children = runs.flatMap((r) =>
        (JSON.parse(r.stdout) as { results: Array<{ ok: boolean; result: ForkResult }> }).results.flatMap((x) =>
          x.result.children.map((c) => c.id),
        ),
      );
      assert.equal(children.length, 16);
      assert.equal(new Set(children).size, 16);
      const after = await json<VmInfo[]>(['vm', 'ls']);
      assert.equal(after.length, before + 16, 'each child created exactly once');
      // A batch's job may run on one scheduler while the other answers its client: the jobs the
      // killed one was running were finished by the other; the clients it was answering asked again.
      for (const k of onFirst) {
        const v = (await requests.get(k))?.json<{ state: string; owner: string }>();
        assert.equal(v?.state, 'done', `${k} finished`);
        assert.ok(!v?.owner.endsWith(`-pid${first.pid}`), `${k} was finished by the other scheduler`);
      }
      process.stderr.write(
        `# ${onFirst.length} of 4 batch jobs were running on the killed scheduler, each finished once by the other; ${retried} clients asked again\n`,
      );
    } finally {
      // Closed whatever happened: an open connection would keep the test process from exiting.
      await opened?.close();
      second.kill('SIGTERM');
      await secondExit;
    }
    // Both schedulers are gone now: `up` again starts what is missing.
    const again = await json<{ processes: Array<{ role: string }> }>(['up', '--detach']);
    assert.equal(again.processes.filter((p) => p.role === 'scheduler').length, 1);
    assert.equal((await json<{ processes: unknown[] }>(['status'])).processes.length, 3);
  });

  it('down destroys every VM and stops every process', async () => {
    const vms = await json<VmInfo[]>(['vm', 'ls']);
    const st = await json<{ processes: Array<{ pid: number }> }>(['status']);
    const r = await json<{ stopped: unknown[] }>(['down']);
    assert.ok(r.stopped.length >= 2);
    assert.deepEqual(await qemuPidsOf(vms.map((v) => v.id)), []);
    for (const p of st.processes) assert.equal(await isRunning(p.pid), false, `process ${p.pid} is gone`);
    assert.deepEqual((await json<{ processes: unknown[] }>(['status'])).processes, []);
  });
});
