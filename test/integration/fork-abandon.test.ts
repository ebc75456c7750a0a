import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pollUntil } from '@forky/base';
import { startFakeCluster, type FakeCluster } from '../helpers/fake-cluster.js';
import type { FakeHostd } from '../helpers/fake-hostd.js';

/**
 * A fork share the scheduler gives up on a host that stopped answering, and places elsewhere, is
 * abandoned at that host (fork.abandon, under the share's key): a host that was only busy and
 * goes on to make those children destroys them, instead of leaving them running as nobody's.
 * Fake hosts (real nats-server and scheduler) beat every second; pings wait 1 s.
 */
describe('a fork share placed elsewhere is abandoned at its first host', { timeout: 120_000 }, () => {
  let c: FakeCluster;
  let sched: FakeCluster['sched'];
  before(async () => {
    c = await startFakeCluster({ config: { hostProbeTimeoutMs: 1_000 } });
    sched = c.sched;
    for (const id of ['ab-a', 'ab-b', 'ab-c']) await c.host(id);
    await pollUntil(async () => ((await sched.client.call('hosts', {})).hosts.filter((h) => h.alive).length === 3 ? true : undefined), {
      timeoutMs: 20_000,
      what: 'three hosts up',
    });
  });
  after(async () => {
    await c?.stop();
  });

  it('the hung host gets fork.abandon with the key of the share it was sent; the fork is made on the others', async () => {
    const [a, b] = c.hosts as [FakeHostd, FakeHostd, FakeHostd];
    const vm = await sched.client.call('vm.boot', { host: a.id });
    const snap = await sched.client.call('snapshot.create', { vm: vm.id, resume: true });
    // b takes its share and never ends it, then stops beating and answering pings: hung.
    const never = new Promise<void>(() => undefined);
    let took!: () => void;
    const taken = new Promise<void>((resolve) => (took = resolve));
    b.before.fork = () => {
      took();
      return never;
    };
    const forking = sched.client.call('fork', { source: snap.id, count: 3, spread: true });
    await taken;
    b.quiet();
    b.before['host.ping'] = () => never;
    const r = await forking;
    assert.equal(r.children.length, 3);
    assert.equal(
      r.children.some((c) => c.host === b.id),
      false,
      'none on the hung host',
    );
    const sent = b.calls.find((c) => c.endpoint === 'fork')?.req.key;
    assert.ok(sent, 'the share was sent under a key');
    await pollUntil(async () => (b.count('fork.abandon') > 0 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'fork.abandon at the hung host',
    });
    assert.deepEqual(
      b.calls.filter((c) => c.endpoint === 'fork.abandon').map((c) => c.req),
      [{ key: sent }],
      'once, naming that share',
    );
  });
});
