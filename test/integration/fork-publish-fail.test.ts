import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ForkyError } from '@forky/base';
import { refused } from '../helpers/errors.js';
import { startFakeForkCluster, type FakeForkCluster } from '../helpers/fake-fork-cluster.js';

/**
 * The scheduler's cross-host fork (services/scheduler/src/fork.ts) over fake hosts, no QEMU: a
 * publish of the source that fails fails the fork with its error; the targets' shares are not
 * placed elsewhere (home), and the children home made are destroyed.
 */
describe('a spread fork whose publish fails (real nats-server and scheduler, fake hosts)', { timeout: 60_000 }, () => {
  const SNAP = 'snap-pubfail00001';
  let c: FakeForkCluster;
  let calls: FakeForkCluster['calls'];
  let destroyed: string[];
  let client: FakeForkCluster['client'];

  before(async () => {
    c = await startFakeForkCluster({
      snap: SNAP,
      vm: 'vm-pubfail00001',
      hosts: ['pf-a', 'pf-b', 'pf-c'],
      home: 'pf-a',
      handlers: () => ({
        'snapshot.publish': async () => {
          throw new ForkyError('CAPACITY', 'object store full');
        },
      }),
    });
    ({ calls, destroyed, client } = c);
  });
  after(() => c?.stop());

  it('fails the fork with the publish error, re-places no share, and destroys what home made', async () => {
    const e = await refused(client.call('fork', { source: SNAP, count: 6, spread: true }));
    assert.equal(e.code, 'CAPACITY', e.message);
    assert.match(e.message, /object store full/);
    const forks = calls.filter((c) => c.endpoint === 'fork');
    assert.deepEqual(
      forks.map((c) => c.host),
      ['pf-a'],
      'home forked its share once; no target forked, none of their shares went home',
    );
    assert.equal(calls.filter((c) => c.endpoint === 'snapshot.fetch').length, 0, 'nothing fetched');
    assert.equal(calls.filter((c) => c.endpoint === 'snapshot.publish').length, 1, 'published once');
    assert.equal(destroyed.length, forks[0]?.count, "home's children destroyed");
  });
});
