import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { delay } from '@forky/base';
import { startTemplateCluster, type TemplateCluster } from '../helpers/template-cluster.js';

/**
 * template.create's timings (services/scheduler/src/template-create.ts) over a real nats-server
 * and scheduler and fake hosts: publishMs is the publish's own time, not the builder's teardown
 * that runs alongside it (review R3, LOW 11).
 */
describe('template.create timings', { timeout: 60_000 }, () => {
  let c: TemplateCluster;
  before(async () => {
    c = await startTemplateCluster('tt');
  });
  after(async () => {
    await c?.stop();
  });

  it('publishMs leaves out a slow builder teardown', async () => {
    // The fake publish answers at once; the builder's destroy takes 1.5 s.
    c.a.before['vm.destroy'] = () => delay(1_500);
    const t = await c.createDone({ name: 'timed', host: c.a.id, key: 'tt-timed-0001' }).finally(() => delete c.a.before['vm.destroy']);
    assert.equal(c.a.calls.filter((x) => x.endpoint === 'vm.destroy').length, 1, 'the builder was destroyed');
    const ms = t.timings?.publishMs;
    assert.equal(typeof ms, 'number');
    assert.ok((ms as number) < 1_000, `publishMs ${ms} excludes the 1.5 s teardown`);
    assert.ok((t.timings?.totalMs ?? 0) >= 1_500, 'the teardown is in the total');
  });
});
