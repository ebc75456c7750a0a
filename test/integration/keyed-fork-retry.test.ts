import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createInbox, headers } from '@nats-io/nats-core';
import { pollUntil } from '@forky/base';
import { SchedulerClient, openBuckets, startNatsServer, type NatsServer, type RetryNotice } from '@forky/bus';
import { CONTENT_TYPE, encodeBody, subjects, type SchedRequestOf, type VmInfo } from '@forky/contract';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';

/**
 * A keyed fork whose reply was lost, asked again under its key through the retrying client,
 * makes its children once. Dry-run host (VMs as records): the point is the request path.
 */
describe('a keyed fork retried after a lost reply makes its children once', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let parent: VmInfo;
  const notices: RetryNotice[] = [];

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'kf-h1', overrides: { dryRun: true, pool: { size: 0 } } });
    sched = await startTestScheduler(nats.url);
    await pollUntil(
      async () => ((await sched.client.call('hosts', {})).hosts.some((h) => h.id === 'kf-h1' && h.alive) ? true : undefined),
      {
        timeoutMs: 20_000,
        what: 'the host reporting in',
      },
    );
    parent = await sched.client.call('vm.boot', { host: 'kf-h1', key: 'kf-boot-000001' });
  });
  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it("the repeat returns the first run's children; the host has them once", async () => {
    const body: SchedRequestOf<'fork'> = { source: parent.id, count: 3, key: 'kf-fork-000001' };
    // The first send: its reply goes to an inbox nobody reads, as if the connection dropped.
    const h = headers();
    h.set('Content-Type', CONTENT_TYPE.json);
    sched.nc.publish(subjects.sched('fork'), encodeBody(body, 'json'), { reply: createInbox(), headers: h });
    const { requests } = await openBuckets(sched.nc);
    await pollUntil(async () => ((await requests.get(body.key as string))?.operation === 'PUT' ? true : undefined), {
      timeoutMs: 20_000,
      what: 'the first fork claimed',
    });

    const client = new SchedulerClient(sched.nc, { timeoutMs: 60_000, retry: { onRetry: (n) => notices.push(n) } });
    const again = await client.call('fork', body);
    assert.equal(again.children.length, 3);
    const third = await client.call('fork', body);
    assert.deepEqual(
      third.children.map((c) => c.id),
      again.children.map((c) => c.id),
      'the same children every time',
    );
    const { vms } = await client.call('vm.list', {});
    assert.equal(vms.length, 1 + 3, 'the parent and three children, made once');
    assert.deepEqual(
      vms
        .filter((v) => v.id !== parent.id)
        .map((v) => v.id)
        .sort(),
      again.children.map((c) => c.id).sort(),
    );
    assert.equal(notices.length, 0, 'answered without a lost reply on these calls');
  });
});
