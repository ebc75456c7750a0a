import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { Forky, ForkyError, parseDuration, type Vm } from '@forky/sdk';
import { pollUntil } from '@forky/base';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { REPO, ensureImageOnce } from '../helpers/repo.js';
import { sdkEvents } from '../helpers/sdk-events.js';

const getText = (port: number, p: string): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(20_000, () => req.destroy(new Error('GET timed out')));
  });

/**
 * @forky/sdk against a real cluster (nats-server, a scheduler, a hostd with QEMU): what a program
 * building on Forky Pig does, through the package's public exports only.
 */
describe('@forky/sdk on a real cluster (real QEMU, real nats-server)', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let forky: Forky;
  let vm: Vm;

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'sdk-a' });
    sched = await startTestScheduler(nats.url);
    forky = await Forky.connect({ servers: nats.url, data: '/nonexistent-forky-data' });
  });

  after(async () => {
    await forky?.close();
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it('creates a VM and lists and gets it', async () => {
    vm = await forky.vms.create({ memMiB: 256 });
    assert.equal(vm.info.state, 'running');
    assert.equal(vm.info.host, 'sdk-a');
    assert.deepEqual(
      (await forky.vms.list({ state: 'running' })).map((v) => v.id),
      [vm.id],
    );
    assert.deepEqual(await forky.vms.list({ state: 'paused' }), []);
    assert.equal((await forky.vms.get(vm.id)).id, vm.id);
    assert.equal((await forky.hosts()).length, 1);
  });

  it('ttl and idle are checked before anything is sent: one duration parser, errors naming the field', async () => {
    assert.deepEqual(
      ['1500ms', '90s', '10m', '2h', '7d', '250', 1500].map((d) => parseDuration(d)),
      [1500, 90_000, 600_000, 7_200_000, 604_800_000, 250, 1500],
    );
    const field = (f: string) => (e: unknown) => e instanceof ForkyError && e.code === 'BAD_REQUEST' && e.details?.field === f;
    assert.throws(() => parseDuration('soon', 'wait'), field('wait'));
    assert.throws(() => parseDuration(-1), field('duration'));
    await assert.rejects(forky.vms.create({ ttl: '5 minutes' }), field('ttl'));
    await assert.rejects(forky.vms.create({ ttl: 999 }), field('ttl'));
    await assert.rejects(forky.vms.create({ idle: { after: '1x', then: 'pause' } }), field('idle.after'));
    await assert.rejects(forky.vms.create({ idle: { after: '3s', then: 'sleep' as 'pause' } }), field('idle.then'));
    await assert.rejects(vm.fork({ ttl: '31d' }), field('ttl'));
    await assert.rejects(vm.extend('0s'), field('ttl'));
    assert.deepEqual(
      (await forky.vms.list()).map((v) => v.id),
      [vm.id],
      'no VM was made',
    );
    assert.equal((await vm.refresh()).lifecycle, undefined, 'and this one was not given a TTL');
  });

  it("a VM with ttl '5s' is gone within 10 s: its events, by label, say expired, then destroyed", async () => {
    const life = { life: `ttl-${process.pid}` };
    const mine = sdkEvents(forky, life);
    const all = sdkEvents(forky);
    await Promise.all([mine.ready(), all.ready()]);
    try {
      const short = await forky.vms.create({ ttl: '5s', labels: life });
      const made = Date.now();
      assert.equal(short.lifecycle?.ttlMs, 5000);
      assert.ok(short.lifecycle?.expiresAt && Date.parse(short.lifecycle.expiresAt) <= made + 5000, short.lifecycle?.expiresAt);
      const destroyed = await mine.until((e) => e.kind === 'destroyed' && e.vm === short.id, 10_000 - (Date.now() - made));
      const kinds = mine.of(short.id);
      assert.ok(kinds.indexOf('expired') >= 0 && kinds.indexOf('expired') < kinds.indexOf('destroyed'), kinds.join(' '));
      assert.deepEqual(destroyed.labels, life);
      const after = await forky.vms.get(short.id).then(
        (v) => v.state,
        (e: unknown) => (e instanceof ForkyError ? e.code : String(e)),
      );
      assert.ok(after === 'destroyed' || after === 'NOT_FOUND', after);
      assert.deepEqual(
        (await forky.vms.list({ labels: life })).filter((v) => v.state !== 'destroyed'),
        [],
      );
      // The label filter kept exactly the labelled VM's events; the unfiltered stream saw the same ones.
      assert.ok(
        mine.events.every((e) => e.vm === short.id && e.labels?.life === life.life),
        JSON.stringify(mine.events),
      );
      assert.deepEqual(all.of(short.id), kinds);
    } finally {
      await Promise.all([mine.close(), all.close()]);
    }
  });

  it('exec streams output to callbacks as it comes, keeps it, and gives the exit code without throwing', async () => {
    const seen: string[] = [];
    const r = await vm.exec('for i in 1 2 3; do echo out$i; echo err$i >&2; usleep 50000; done; exit 3', {
      onStdout: (t) => seen.push(t),
    });
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, 'out1\nout2\nout3\n');
    assert.equal(r.stderr, 'err1\nerr2\nerr3\n');
    assert.equal(seen.join(''), r.stdout);
    assert.ok(seen.length >= 2, `stdout came in pieces as it was written (${seen.length})`);
    const argv = await vm.exec(['sh', '-c', 'cat; echo "[$1]"', 'sh', 'a b'], { stdin: 'from stdin\n', env: { X: '1' } });
    assert.deepEqual([argv.exitCode, argv.stdout], [0, 'from stdin\n[a b]\n']);
  });

  it('exec past its deadline is killed and says timedOut; an AbortSignal kills the command in the guest', async () => {
    const t = await vm.exec('sleep 30', { timeoutMs: 500 });
    assert.equal(t.timedOut, true);
    const ac = new AbortController();
    const running = vm.exec('echo started; sleep 60; echo never', { signal: ac.signal, onStdout: () => ac.abort(new Error('enough')) });
    await assert.rejects(running, /enough/);
    // The guest's process group is gone: nothing runs `sleep 60` any more.
    await pollUntil(async () => ((await vm.exec('ps')).stdout.includes('sleep 60') ? undefined : true), {
      timeoutMs: 10_000,
      what: 'the aborted command ending in the guest',
    });
  });

  it('spawn gives a process: its stdin, its output by iteration, its exit', async () => {
    const p = await vm.spawn(['sh', '-c', 'while read l; do echo "got $l"; done; exit 7'], { stdin: true });
    assert.ok(p.pid && p.pid > 1);
    await p.write('one\ntwo\n');
    await p.closeStdin();
    let out = '';
    for await (const c of p) out += Buffer.from(c.bytes).toString();
    assert.equal(out, 'got one\ngot two\n');
    assert.deepEqual(await p.wait(), { exitCode: 7, signal: null, timedOut: false, cancelled: false });
  });

  it('files: write, read, list, stat, rename, remove; a missing file is a NOT_FOUND ForkyError', async () => {
    const big = Buffer.alloc(300_000, 7);
    assert.deepEqual(await vm.files.write('/tmp/sdk/a.bin', big, { parents: true }), { bytes: big.length });
    assert.ok((await vm.files.read('/tmp/sdk/a.bin')).equals(big));
    await vm.files.write('/tmp/sdk/t.txt', 'hello');
    await vm.files.write('/tmp/sdk/t.txt', ' world', { mode: 'append' });
    assert.equal(await vm.files.readText('/tmp/sdk/t.txt'), 'hello world');
    assert.deepEqual((await vm.files.list('/tmp/sdk')).entries.map((e) => e.name).sort(), ['a.bin', 't.txt']);
    assert.equal((await vm.files.stat('/tmp/sdk/a.bin')).size, big.length);
    await vm.files.rename('/tmp/sdk/t.txt', '/tmp/sdk/u.txt');
    assert.equal(await vm.files.exists('/tmp/sdk/t.txt'), false);
    await vm.files.remove('/tmp/sdk', { recursive: true });
    const err = await vm.files.read('/tmp/sdk/u.txt').catch((e: unknown) => e);
    assert.ok(err instanceof ForkyError, String(err));
    assert.equal(err.code, 'NOT_FOUND');
    await assert.rejects(vm.files.read('/proc/self/exe', { maxBytes: 10 }), (e: ForkyError) => e.code === 'CAPACITY');
  });

  it('forward carries local TCP connections to a guest port', async () => {
    await vm.exec('mkdir -p /tmp/www && echo sdk-page > /tmp/www/index.html && httpd -p 8080 -h /tmp/www');
    const f = await vm.forward(8080);
    try {
      const r = await getText(f.address.port, '/index.html');
      assert.deepEqual(r, { status: 200, body: 'sdk-page\n' });
    } finally {
      await f.close();
    }
  });

  it('a live fork hands the VM over while a process streams: its output is read once, whole, in order', async () => {
    const p = await vm.spawn('i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo line$i; usleep 50000; done');
    const reading = (async () => {
      let out = '';
      for await (const c of p) out += Buffer.from(c.bytes).toString();
      return out;
    })();
    await vm.exec('echo marker-sdk > /run/m');
    const { children, snapshot } = await vm.fork({ count: 2, live: true });
    assert.equal(children.length, 2);
    assert.equal(vm.info.state, 'running', 'a live fork keeps the parent running');
    const out = await reading;
    assert.equal(out, Array.from({ length: 40 }, (_, i) => `line${i + 1}\n`).join(''));
    assert.equal((await p.wait()).exitCode, 0);
    for (const c of children) {
      assert.equal((await c.files.readText('/run/m')).trim(), 'marker-sdk');
      assert.notEqual(c.id, vm.id);
    }
    assert.equal((await forky.snapshots.get(snapshot.id)).vm, vm.id);
    for (const c of children) assert.equal((await c.destroy()).state, 'destroyed');
  });

  it('an idle rule pauses a fork nobody uses (pausedBy idle); an exec wakes it: events paused, resumed', async () => {
    const life = { life: `idle-${process.pid}` };
    const mine = sdkEvents(forky, life);
    const all = sdkEvents(forky);
    await Promise.all([mine.ready(), all.ready()]);
    let child: Vm | undefined;
    try {
      const { children } = await vm.fork({ count: 1, live: true, labels: life, idle: { after: '3s', then: 'pause' } });
      child = children[0] as Vm;
      assert.deepEqual(child.lifecycle?.idle, { afterMs: 3000, then: 'pause' });
      const id = child.id;
      await mine.until((e) => e.kind === 'paused' && e.vm === id, 30_000);
      await child.refresh();
      assert.equal(child.state, 'paused');
      assert.equal(child.lifecycle?.pausedBy, 'idle');
      // Touching it is enough: the exec resumes it and runs.
      assert.equal((await child.exec('echo awake')).stdout, 'awake\n');
      await mine.until((e) => e.kind === 'resumed' && e.vm === id, 10_000);
      await child.refresh();
      assert.notEqual(child.lifecycle?.pausedBy, 'idle');
      const kinds = mine.of(id);
      assert.ok(kinds.indexOf('paused') >= 0 && kinds.indexOf('paused') < kinds.indexOf('resumed'), kinds.join(' '));
      // By label: the child's events only; the fork's own (the source's, unlabelled) went by.
      assert.ok(
        mine.events.every((e) => e.labels?.life === life.life),
        JSON.stringify(mine.events),
      );
      assert.ok(all.events.some((e) => e.kind === 'forked' && e.vm === vm.id && e.labels?.life === undefined));
    } finally {
      await child?.destroy().catch(() => undefined);
      await Promise.all([mine.close(), all.close()]);
    }
  });

  it('vm.extend moves lifecycle.expiresAt (a VM without a TTL gets one; shorter works too)', async () => {
    const t0 = Date.now();
    const a = await vm.extend('20m');
    const at = Date.parse(a.lifecycle?.expiresAt ?? '');
    assert.ok(at >= t0 + 20 * 60_000 && at <= Date.now() + 20 * 60_000, a.lifecycle?.expiresAt);
    assert.equal(vm.lifecycle?.ttlMs, 20 * 60_000, 'the Vm shows what the reply said');
    const b = await vm.extend(10 * 60_000);
    const shorter = Date.parse(b.lifecycle?.expiresAt ?? '');
    assert.ok(shorter < at - 9 * 60_000 && shorter >= t0 + 10 * 60_000, `${a.lifecycle?.expiresAt} then ${b.lifecycle?.expiresAt}`);
    assert.equal((await forky.vms.get(vm.id)).lifecycle?.expiresAt, b.lifecycle?.expiresAt, 'as the cluster keeps it');
  });

  it('vm.snapshot({ keep }) reaches the host through the scheduler: that snapshot is kept from retention, another is not', async () => {
    const kept = await vm.snapshot({ resume: true, keep: true });
    const plain = await vm.snapshot({ resume: true });
    assert.equal(kept.keep, true);
    assert.equal((await forky.snapshots.get(kept.id)).keep, true, 'as its host keeps it');
    assert.equal(plain.keep, undefined);
    assert.equal(vm.state, 'running');
  });

  it('pause, resume, destroy; a VM that does not exist is a NOT_FOUND ForkyError', async () => {
    assert.equal((await vm.pause()).state, 'paused');
    assert.equal((await vm.resume()).state, 'running');
    assert.equal((await vm.exec('echo up')).stdout, 'up\n');
    assert.equal((await vm.destroy()).state, 'destroyed');
    const e = await forky.vms.get('vm-doesnotexist').catch((x: unknown) => x);
    assert.ok(e instanceof ForkyError && e.code === 'NOT_FOUND', String(e));
  });

  it('examples/fork-search runs to completion on the cluster: it finds the secret of the guest through forks alone and prints the tree', async () => {
    const main = path.join(REPO, 'examples', 'dist', 'fork-search', 'main.js');
    const { stdout } = await promisify(execFile)(process.execPath, [main, '--server', nats.url, '--children', '5', '--length', '2'], {
      env: { ...process.env, FORKY_DATA: path.join(REPO, 'test', '.tmp', 'no-such-cluster') },
      timeout: 240_000,
    });
    const found = /^found (\d{2}) in (\d+) rounds/m.exec(stdout);
    assert.ok(found, stdout);
    const kept = stdout.split('\n').filter((l) => l.endsWith('← kept'));
    assert.equal(kept.length, 2, stdout);
    assert.match(kept.at(-1) as string, new RegExp(`${found[1]}\\s+score 2`));
    // Every VM and snapshot it made is gone.
    assert.deepEqual((await forky.vms.list()).filter((v) => v.info.state !== 'destroyed').length, 0);
  });
});
