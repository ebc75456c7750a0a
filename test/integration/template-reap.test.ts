import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { delay, pollUntil } from '@forky/base';
import type { SchedRequestOf, VmInfo } from '@forky/contract';
import { COPY_GRACE } from '@forky/scheduler/internal';
import { refused } from '../helpers/errors.js';
import { HOST_CALL_MS, startTemplateCluster, type TemplateCluster } from '../helpers/template-cluster.js';

/**
 * Template boots and the reaper (review findings 4, 5, 6, 7), over a real nats-server and
 * scheduler and two fake hosts: a retried boot stays on its host, a boot's egress reaches the
 * fork, the reaper never deletes a snapshot a template names, and fetched copies are deleted.
 */
describe('template boots and the reaper', { timeout: 180_000 }, () => {
  let c: TemplateCluster;
  const bootDone = async (req: SchedRequestOf<'vm.boot'>): Promise<VmInfo> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        return await c.sched.client.call('vm.boot', req, { timeoutMs: 30_000 });
      } catch (e) {
        const waited = (e as { code?: string }).code === 'TIMEOUT' && /no answer within/.test((e as Error).message);
        if (!waited || Date.now() > deadline) throw e;
      }
    }
  };

  before(async () => {
    c = await startTemplateCluster('tr');
    await c.createDone({ name: 'bt', host: c.a.id, key: 'tr-bt-0000001' });
  });
  after(async () => {
    COPY_GRACE.ms = 5 * 60_000;
    await c?.stop();
  });

  it('a boot whose fork timed out is retried on the same host, and makes one VM', async () => {
    c.a.memFreeMiB = 8192;
    c.b.memFreeMiB = 4096;
    await Promise.all([c.a.beat(), c.b.beat()]);
    await pollUntil(
      async () => ((await c.sched.client.call('hosts', {})).hosts.find((h) => h.id === c.b.id)?.memFreeMiB === 4096 ? true : undefined),
      {
        timeoutMs: 10_000,
        what: 'the scheduler to see the memory',
      },
    );
    let first = true;
    c.a.after.fork = async () => {
      if (!first) return;
      first = false;
      // Now a fresh pick would choose the other host.
      c.a.memFreeMiB = 1024;
      await c.a.beat();
      await delay(HOST_CALL_MS + 1_000);
    };
    const before = new Set(c.a.vms.keys());
    const v = await bootDone({ template: 'bt', key: 'tr-boot-000001' });
    delete c.a.after.fork;
    c.a.memFreeMiB = 8192;
    assert.equal(v.host, c.a.id);
    assert.equal(c.b.count('fork'), 0, 'never forked on the other host');
    assert.deepEqual(
      [...c.a.vms.keys()].filter((id) => !before.has(id)),
      [v.id],
      'one VM',
    );
    assert.equal(await c.templates.get('boot.tr-boot-000001').then((e) => (e?.operation === 'PUT' ? e : null)), null, 'its record dropped');
  });

  it('a boot’s network and labels go into the fork (no vm.network after); a name is refused', async () => {
    const networks = c.a.count('vm.network') + c.b.count('vm.network');
    const v = await bootDone({ template: 'bt', host: c.a.id, network: { egress: 'none' }, labels: { team: 'x' }, key: 'tr-boot-net-01' });
    const fork = c.a.calls.filter((x) => x.endpoint === 'fork').at(-1);
    assert.deepEqual(fork?.req['network'], { egress: 'none' });
    assert.deepEqual(fork?.req['labels'], { team: 'x' });
    assert.equal(v.network?.egress, 'none');
    assert.equal(c.a.count('vm.network') + c.b.count('vm.network'), networks, 'no widening window to close');
    const e = await refused(c.sched.client.call('vm.boot', { template: 'bt', name: 'web-1' }));
    assert.equal(e.details?.field, 'name');
  });

  it('the reaper skips a retired snapshot a template still names', async () => {
    const t = await c.sched.client.call('template.show', { name: 'bt' });
    // As a put that retired it and then failed to write left it.
    await c.templates.put(
      `retired.${t.snapshot}`,
      JSON.stringify({ snapshot: t.snapshot, name: 'bt', retiredAt: new Date().toISOString() }),
    );
    await c.sched.running.scheduler.reap();
    assert.ok(c.a.snaps.has(t.snapshot), 'the live template’s snapshot is kept');
    assert.equal(c.a.count('snapshot.delete'), 0);
    assert.deepEqual((await c.sched.client.call('template.list', {})).retired, []);
    assert.equal((await c.sched.client.call('template.show', { name: 'bt' })).snapshot, t.snapshot);
  });

  it('a copy fetched onto a host that was down during the reap is deleted once it is back', async () => {
    const t = await c.createDone({ name: 'cp', host: c.a.id, key: 'tr-cp-0000001' });
    const v = await bootDone({ template: 'cp', host: c.b.id, key: 'tr-cp-boot-01' });
    assert.ok(c.b.copies.has(t.snapshot), 'fetched');
    c.b.vms.delete(v.id);
    await c.b.beat();
    await c.b.down();
    await c.seen(c.b.id, false);
    const rm = await c.sched.client.call('template.delete', { name: 'cp' });
    assert.equal(rm.deleted, true);
    assert.ok(!c.a.snaps.has(t.snapshot), 'the home copy is deleted');
    await c.sched.running.scheduler.reap();
    assert.ok(await c.templates.get(`retired.${t.snapshot}`).then((e) => e?.operation === 'PUT'), 'kept while a down host lists a copy');
    assert.deepEqual((await c.sched.client.call('template.list', {})).retired, [], 'not shown: no VM runs on it');

    COPY_GRACE.ms = 0;
    await c.b.up();
    await c.seen(c.b.id, true);
    await pollUntil(
      async () => {
        await c.sched.running.scheduler.reap();
        return (await c.templates.get(`retired.${t.snapshot}`))?.operation === 'PUT' ? undefined : true;
      },
      { timeoutMs: 15_000, what: 'the retired record to go once no heartbeat lists a copy' },
    );
    assert.ok(!c.b.copies.has(t.snapshot), 'the fetched copy is deleted');
  });
});
