import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ForkyError } from '@forky/base';
import { startFakeForkCluster, type FakeForkCluster } from '../helpers/fake-fork-cluster.js';

/**
 * The scheduler's cross-host fork (services/scheduler/src/fork.ts) over fake hosts, no QEMU: a
 * target that fails has its share placed on the others under a new key, each host call is sent
 * once, and a failure at home fails the fork without sending it again.
 */
describe('a spread fork over fake hosts (real nats-server and scheduler)', { timeout: 60_000 }, () => {
  const SNAP = 'snap-replan000001';
  let c: FakeForkCluster;
  let calls: FakeForkCluster['calls'];
  let failing: Set<string>;
  let client: FakeForkCluster['client'];

  before(async () => {
    c = await startFakeForkCluster({ snap: SNAP, vm: 'vm-replan000001', hosts: ['rp-a', 'rp-b', 'rp-c'], home: 'rp-a' });
    ({ calls, failing, client } = c);
  });
  after(() => c?.stop());

  it("places a failed target's share on the others, under a new key, and sends no call twice", async () => {
    calls.length = 0;
    failing.clear();
    failing.add('rp-b');
    const perChild = Array.from({ length: 6 }, (_, i) => ({ labels: { i: String(i) } }));
    const r = await client.call('fork', { source: SNAP, count: 6, spread: true, perChild });
    assert.equal(r.children.length, 6);
    // Every child's own entry went with it, once, whichever host made it; children come back in that order.
    assert.deepEqual(
      r.children.map((c) => c.labels?.i),
      ['0', '1', '2', '3', '4', '5'],
    );
    assert.ok(
      r.children.every((c) => c.host !== 'rp-b'),
      'no child on the failing host',
    );
    const forks = calls.filter((c) => c.endpoint === 'fork');
    const first = forks.filter((c) => c.host === 'rp-b');
    assert.equal(first.length, 1, 'the failing host got its share once');
    assert.equal(
      forks.filter((c) => c.host !== 'rp-b').reduce((n, c) => n + (c.count ?? 0), 0),
      6,
      'its share went to the others',
    );
    const keys = forks.map((c) => `${c.host} ${c.key}`);
    assert.equal(new Set(keys).size, keys.length, 'each host call under its own key, none sent twice');
    assert.ok(
      forks.every((c) => c.key && /^b[\w-]{30}$/.test(c.key)),
      'every call is keyed',
    );
    assert.equal(calls.filter((c) => c.endpoint === 'snapshot.publish').length, 1, 'published once');
  });

  it('fails the fork when its home fails, and sends nothing again', async () => {
    calls.length = 0;
    failing.clear();
    failing.add('rp-a');
    const e = await client.call('fork', { source: SNAP, count: 6, spread: true }).catch((err: unknown) => err as ForkyError);
    assert.equal((e as ForkyError).code, 'UNAVAILABLE');
    assert.equal(calls.filter((c) => c.endpoint === 'fork' && c.host === 'rp-a').length, 1, 'home got its share once');
  });
});
