import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { pollUntil } from '@forky/base';
import { SchedulerClient, startNatsServer, type NatsServer } from '@forky/bus';
import { TemplateList, type TemplateInfo, type VmInfo } from '@forky/contract';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { refused } from '../helpers/errors.js';
import { RawNats } from '../helpers/raw-nats.js';
import { cliRunner } from '../helpers/cli-run.js';
import { ensureImageOnce } from '../helpers/repo.js';

/**
 * Templates (issue 19 point 5) on two real hosts and a scheduler, real QEMU under TCG: a debian
 * template made with a file-writing step and a background server, forked on either host; a
 * failing step; bad boots; a rebuild while a VM of the old one runs, and the reaper after it.
 */
describe('templates: make once, fork anywhere', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let hosts: TestHost[] = [];
  let sched: TestScheduler;
  let client: SchedulerClient;
  let tpl: TemplateInfo;
  const vms: string[] = [];
  const sh = guestShell((id, cmd) => client.call('vm.exec', { id, cmd }));
  const hostOf = (id: string): TestHost => hosts.find((h) => h.hostId === id) as TestHost;

  before(async () => {
    await ensureImageOnce('tiny');
    await ensureImageOnce('debian');
    nats = await startNatsServer();
    const started = await Promise.allSettled(['tp-a', 'tp-b'].map((id) => startTestHost(nats.url, { hostId: id })));
    hosts = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    // A short reap interval: the reaper's timer, not only a delete, deletes what nothing uses.
    sched = await startTestScheduler(nats.url, { config: { templateReapMs: 1_000 } });
    client = sched.client;
  });

  after(async () => {
    for (const id of vms) await client?.call('vm.destroy', { id }).catch(() => undefined);
    const left = await client?.call('template.list', {}).catch(() => undefined);
    for (const t of left?.templates ?? []) await client.call('template.delete', { name: t.name }).catch(() => undefined);
    await sched?.stop();
    await Promise.all(hosts.map((h) => h.stop()));
    await nats?.stop();
  });

  it('makes a debian template: a step writes files, one starts a server, ready polls it', async () => {
    const t0 = performance.now();
    tpl = await client.call('template.create', {
      name: 'py',
      image: 'debian',
      host: 'tp-a',
      run: [
        'python3 -m venv --without-pip /opt/v && echo ready > /etc/ready',
        // Detached, output closed: it outlives the step and is in the snapshot.
        "cd /opt && setsid sh -c 'exec /opt/v/bin/python -m http.server 8000' </dev/null >/dev/null 2>&1 &",
      ],
      ready: 'curl -sf -o /dev/null http://127.0.0.1:8000/',
      key: 'tpl-create-py-1',
    });
    process.stderr.write(`# template py made in ${Math.round(performance.now() - t0)} ms: ${JSON.stringify(tpl.timings)}\n`);
    assert.equal(tpl.host, 'tp-a');
    assert.equal(tpl.image, 'debian');
    assert.match(tpl.snapshot, /^snap-/);
    // The builder VM is gone; its snapshot stays, published.
    assert.deepEqual((await client.call('vm.list', {})).vms, []);
    assert.deepEqual(await client.call('template.show', { name: 'py' }), tpl);
    // The same key again is the same template, not a second build.
    assert.deepEqual(
      await client.call('template.create', {
        name: 'py',
        image: 'debian',
        host: 'tp-a',
        run: tpl.run,
        ready: tpl.ready,
        key: 'tpl-create-py-1',
      }),
      tpl,
    );
  });

  for (const host of ['tp-a', 'tp-b']) {
    it(`boots from it on ${host}: a fork that sees the files and the running server`, async () => {
      const t0 = performance.now();
      const v: VmInfo = await client.call('vm.boot', { template: 'py', host, key: `tpl-boot-${host}` });
      vms.push(v.id);
      process.stderr.write(`# vm.boot --template on ${host}: ${Math.round(performance.now() - t0)} ms\n`);
      assert.equal(v.host, host);
      assert.equal(v.parentSnapshot, tpl.snapshot, 'the VM is a fork of the template');
      assert.equal(v.image, 'debian');
      assert.equal(v.memMiB, tpl.memMiB);
      assert.equal((await sh(v.id, 'cat /etc/ready')).trim(), 'ready');
      assert.equal((await sh(v.id, 'test -x /opt/v/bin/python && echo venv')).trim(), 'venv');
      assert.match(await sh(v.id, 'pgrep -f "m http[.]server"'), /^\d+/m, 'the step started process runs in the child');
      assert.equal((await sh(v.id, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/")).trim(), '200');
      const held = (await hostOf(host).client.call('snapshot.list', {})).snapshots.map((s) => s.id);
      assert.ok(held.includes(tpl.snapshot), `${host} holds the snapshot${host === 'tp-b' ? ' (fetched)' : ''}`);
    });
  }

  it('refuses what a template VM cannot be, naming the field; an unknown template is NOT_FOUND', async () => {
    const mem = await refused(client.call('vm.boot', { template: 'py', memMiB: tpl.memMiB * 2 }));
    assert.equal(mem.code, 'BAD_REQUEST');
    assert.equal(mem.details?.field, 'memMiB');
    const img = await refused(client.call('vm.boot', { template: 'py', image: 'tiny', key: 'tpl-bad-image' }));
    assert.equal(img.details?.field, 'image');
    assert.equal((await refused(client.call('vm.boot', { template: 'py', diskGiB: 4 }))).details?.field, 'diskGiB');
    const none = await refused(client.call('vm.boot', { template: 'nope' }));
    assert.equal(none.code, 'NOT_FOUND');
    assert.match(none.message, /nope/);
    assert.equal((await refused(client.call('template.show', { name: 'nope' }))).code, 'NOT_FOUND');
    assert.equal((await refused(client.call('template.create', { name: 'Bad.Name' } as never))).details?.field, 'name');
  });

  it('a failing step fails the create with its stderr tail, and leaves no VM, snapshot or template', async () => {
    const before = (await client.call('snapshot.list', {})).snapshots.map((s) => s.id).sort();
    const e = await refused(
      client.call('template.create', {
        name: 'broken',
        image: 'tiny',
        run: ['true', 'echo step-two-said-this >&2; exit 3'],
        key: 'tpl-broken-1',
      }),
    );
    assert.equal(e.code, 'BAD_REQUEST');
    assert.equal(e.details?.field, 'run.1');
    assert.match(e.message, /step 2 exited 3/);
    assert.match(e.message, /step-two-said-this/);
    assert.deepEqual(
      (await client.call('vm.list', {})).vms.filter((v) => !vms.includes(v.id)),
      [],
      'the builder VM was destroyed',
    );
    assert.deepEqual((await client.call('snapshot.list', {})).snapshots.map((s) => s.id).sort(), before);
    assert.equal((await refused(client.call('template.show', { name: 'broken' }))).code, 'NOT_FOUND');
  });

  it('a rebuild keeps the old snapshot while a VM uses it; the reaper deletes it after', async () => {
    const v1 = await client.call('template.create', { name: 'tt', image: 'tiny', run: ['echo one > /etc/which'], key: 'tpl-tt-v1' });
    const vm = await client.call('vm.boot', { template: 'tt', key: 'tpl-tt-boot' });
    vms.push(vm.id);
    const v2 = await client.call('template.create', { name: 'tt', image: 'tiny', run: ['echo two > /etc/which'], key: 'tpl-tt-v2' });
    assert.notEqual(v2.snapshot, v1.snapshot);
    const list = await client.call('template.list', {});
    assert.equal(list.templates.find((t) => t.name === 'tt')?.snapshot, v2.snapshot);
    assert.deepEqual(
      list.retired.map((r) => [r.snapshot, r.name]),
      [[v1.snapshot, 'tt']],
    );
    // Reaper rounds come and go; the old snapshot stays while its VM runs.
    await sched.running.scheduler.reap();
    assert.ok((await client.call('snapshot.list', {})).snapshots.some((s) => s.id === v1.snapshot));
    assert.equal((await sh(vm.id, 'cat /etc/which')).trim(), 'one', 'the old VM still execs, on the old template');
    const fresh = await client.call('vm.boot', { template: 'tt' });
    vms.push(fresh.id);
    assert.equal((await sh(fresh.id, 'cat /etc/which')).trim(), 'two');

    await client.call('vm.destroy', { id: vm.id });
    await pollUntil(async () => ((await client.call('template.list', {})).retired.length === 0 ? true : undefined), {
      timeoutMs: 20_000,
      what: 'the reaper to delete the retired snapshot',
    });
    assert.ok(!(await client.call('snapshot.list', {})).snapshots.some((s) => s.id === v1.snapshot), 'the old snapshot is gone');

    // Removing a template in use keeps its snapshot retired.
    const rm = await client.call('template.delete', { name: 'tt' });
    assert.deepEqual(rm, { name: 'tt', snapshot: v2.snapshot, deleted: false });
    assert.equal((await refused(client.call('template.show', { name: 'tt' }))).code, 'NOT_FOUND');
    assert.deepEqual(
      (await client.call('template.list', {})).retired.map((r) => r.snapshot),
      [v2.snapshot],
    );
  });

  it('the CLI lists templates, boots one, and says NOT_FOUND for an unknown one', async () => {
    const { forky, json } = cliRunner(() => os.tmpdir());
    const list = await json<{ templates: TemplateInfo[] }>(['--server', nats.url, 'template', 'ls']);
    assert.deepEqual(
      list.templates.map((t) => t.name),
      ['py'],
    );
    const v = await json<VmInfo>(['--server', nats.url, 'vm', 'boot', '--template', 'py']);
    vms.push(v.id);
    assert.equal(v.parentSnapshot, tpl.snapshot);
    const bad = await forky(['--server', nats.url, 'vm', 'boot', '--template', 'py', '--mem', '1024']);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /memMiB/);
    const none = await forky(['--server', nats.url, 'template', 'show', 'nope']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /NOT_FOUND/);
  });

  it('answers template.list as raw JSON on its subject, as the nats CLI would send it', async () => {
    const raw = await RawNats.connect(nats.port);
    try {
      const r = await raw.request('forky.v1.sched.template.list', '{}');
      assert.ok(r, 'a reply came');
      const list = TemplateList.parse(JSON.parse(r.data.toString()));
      assert.deepEqual(
        list.templates.map((t) => t.name),
        ['py'],
      );
    } finally {
      raw.close();
    }
  });
});
