import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Kvm } from '@nats-io/kv';
import { SchedulerClient, startNatsServer, type NatsServer } from '@forky/bus';
import type { ForkResult, VmInfo } from '@forky/contract';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce } from '../helpers/repo.js';

const lines = (s: string): string[] => s.trim().split('\n');

describe('three hosts: a fork spread across them ships the snapshot through the object store', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let hosts: TestHost[] = [];
  let sched: TestScheduler;
  let client: SchedulerClient;
  let parent: VmInfo;
  let first: ForkResult;
  const marker = randomBytes(6).toString('hex');
  let bootId: string;
  let counter: number;

  const sh = guestShell((id, cmd) => client.call('vm.exec', { id, cmd }));

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    // Keep every host that did start, so `after` stops them even if another failed to.
    const started = await Promise.allSettled(['mh-a', 'mh-b', 'mh-c'].map((id) => startTestHost(nats.url, { hostId: id })));
    hosts = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    sched = await startTestScheduler(nats.url);
    client = sched.client;
  });

  after(async () => {
    await sched?.stop();
    await Promise.all(hosts.map((h) => h.stop()));
    await nats?.stop();
  });

  it('sees three live hosts', async () => {
    const { hosts: hs } = await client.call('hosts', {});
    assert.deepEqual(
      hs.filter((h) => h.alive).map((h) => h.id),
      ['mh-a', 'mh-b', 'mh-c'],
    );
  });

  it('forks a VM of host a into 6 children spread over 3 hosts; each resumes it', async () => {
    parent = await client.call('vm.boot', { host: 'mh-a' });
    assert.equal(parent.host, 'mh-a');
    const out = await sh(
      parent.id,
      `echo ${marker} > /run/marker; (i=0; while true; do i=$((i+1)); echo $i > /run/c.new; mv /run/c.new /run/counter; usleep 20000; done) >/dev/null 2>&1 &
       while [ ! -s /run/counter ] || [ "$(cat /run/counter)" -lt 5 ]; do usleep 10000; done
       cat /proc/sys/kernel/random/boot_id /run/counter`,
    );
    [bootId, counter] = ((l) => [l[0] as string, Number(l[1])])(lines(out));

    first = await client.call('fork', { source: parent.id, count: 6, spread: true });
    assert.equal(first.children.length, 6);
    const perHost = new Map<string, number>();
    for (const c of first.children) perHost.set(c.host, (perHost.get(c.host) ?? 0) + 1);
    assert.deepEqual([...perHost.entries()].sort(), [
      ['mh-a', 2],
      ['mh-b', 2],
      ['mh-c', 2],
    ]);
    const fetched = (first.transfers ?? []).filter((t) => t.host !== 'mh-a');
    assert.equal(fetched.length, 2, 'the snapshot was fetched by the two other hosts');
    for (const t of fetched) {
      assert.ok(t.moved > 0 && t.bytes > 0, `host ${t.host} fetched parts`);
      assert.ok(t.bytes < t.nominalBytes, `zero chunks were not sent (${t.bytes} < ${t.nominalBytes})`);
    }
    for (const c of first.children) {
      const [b, m, n] = lines(await sh(c.id, 'cat /proc/sys/kernel/random/boot_id /run/marker /run/counter'));
      assert.equal(b, bootId, `${c.id} on ${c.host} has the parent's boot id`);
      assert.equal(m, marker);
      assert.ok(Number(n) >= counter, `${c.id} counter ${n} continues from ${counter}`);
    }
    process.stderr.write(`# transfers: ${JSON.stringify(first.transfers)}\n`);
  });

  it('keeps each child isolated on disk, across hosts', async () => {
    const [one, ...others] = first.children as [VmInfo, ...VmInfo[]];
    await sh(one.id, 'echo mine > /data/only-here && sync');
    for (const o of others) assert.equal((await sh(o.id, 'ls /data')).includes('only-here'), false, `${o.id} on ${o.host}`);
  });

  it('a second fork of the same snapshot to the same hosts ships no part again', async () => {
    const t0 = performance.now();
    const again = await client.call('fork', { source: first.snapshot.id, count: 3, spread: true });
    const ms = performance.now() - t0;
    assert.equal(again.children.length, 3);
    assert.deepEqual(new Set(again.children.map((c) => c.host)), new Set(['mh-a', 'mh-b', 'mh-c']));
    for (const t of again.transfers ?? []) {
      assert.equal(t.moved, 0, `${t.host}: nothing moved`);
      assert.equal(t.bytes, 0, `${t.host}: no byte shipped`);
    }
    process.stderr.write(`# second spread fork of 3: ${Math.round(ms)} ms\n`);
    // Heartbeats report what the VMs really cost, which placement uses.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const hs = (await client.call('hosts', {})).hosts;
      if (hs.every((h) => h.memCommittedMiB > 0 && h.childPssMiB > 0)) {
        for (const h of hs) assert.ok(h.childPssMiB < 256, `${h.id}: a child costs ${h.childPssMiB} MiB, less than its 256 MiB guest`);
        break;
      }
      assert.ok(Date.now() < deadline, 'heartbeats report committed memory and child cost');
      await new Promise((res) => setTimeout(res, 250));
    }
  });

  it('a fork pinned to another host fetches there and runs there; bad placement is refused clearly', async () => {
    const pinned = await client.call('fork', { source: first.snapshot.id, count: 1, host: 'mh-c' });
    assert.equal(pinned.children[0]?.host, 'mh-c');
    await assert.rejects(client.call('fork', { source: first.snapshot.id, count: 1, host: 'mh-zz' }), /NOT_FOUND|host "mh-zz" not found/);
  });

  it('a host killed during a fork is marked down, its share placed elsewhere, its VMs shown as lost', async (t) => {
    const victim = hosts[2] as TestHost;
    const itsVms = (await client.call('vm.list', {})).vms.filter((v) => v.host === victim.hostId).map((v) => v.id);
    assert.ok(itsVms.length > 0);
    // The cluster can only show as lost what the host's last heartbeat told it: wait for one with them all.
    const beats = await new Kvm(sched.nc).open('forky_hosts');
    const seen = Date.now();
    for (;;) {
      const e = await beats.get(victim.hostId);
      const listed = new Set((e?.json<{ vmList: Array<{ id: string }> }>().vmList ?? []).map((v) => v.id));
      if (itsVms.every((id) => listed.has(id))) break;
      assert.ok(Date.now() - seen < 10_000, 'a heartbeat lists the host VMs');
      await new Promise((res) => setTimeout(res, 50));
    }
    const forking = client.call('fork', { source: first.snapshot.id, count: 6, spread: true });
    // The host drops off the network as the fork starts: no more answers, no more heartbeats.
    await victim.hostd.nc.close();
    const closedAt = Date.now();
    const r = await forking;
    const forkedMs = Date.now() - closedAt;
    assert.equal(r.children.length, 6, 'all 6 children were made');
    assert.equal(r.children.filter((c) => c.host === victim.hostId).length, 0, 'none on the dead host');
    assert.deepEqual(new Set(r.children.map((c) => c.host)), new Set(['mh-a', 'mh-b']));
    for (const c of r.children) assert.equal((await sh(c.id, 'cat /run/marker')).trim(), marker);

    const deadline = Date.now() + 20_000;
    for (;;) {
      const h = (await client.call('hosts', {})).hosts.find((x) => x.id === victim.hostId);
      if (h?.alive === false) break;
      assert.ok(Date.now() < deadline, 'the host is marked down within 20 s');
      await new Promise((res) => setTimeout(res, 250));
    }
    t.diagnostic(
      `heartbeat listing its VMs after ${closedAt - seen} ms; the fork answered ${forkedMs} ms, the host seen down ${Date.now() - closedAt} ms after the close`,
    );
    const lost = (await client.call('vm.list', {})).vms.filter((v) => v.host === victim.hostId);
    assert.deepEqual(lost.map((v) => v.id).sort(), [...itsVms].sort());
    assert.ok(
      lost.every((v) => v.state === 'lost'),
      'its VMs are shown as lost',
    );
  });
});
