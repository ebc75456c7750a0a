import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { pollUntil } from '@forky/base';
import { HostdClient, openBuckets, startNatsServer, type NatsServer } from '@forky/bus';
import { startEphemeralHostd, type EphemeralHostd } from '@forky/hostd';
import { subjects, type Heartbeat, type VmInfo } from '@forky/contract';
import { fakeBeat } from '../helpers/fake-beat.js';
import { testLogger } from '../helpers/hostd.js';
import { IMAGES_DIR } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

/** A beat as a host of ours sends it; `list` left out is a change's beat (contract host.ts). */
const beat = (id: string, instance: string, o: { ts: number; vms: number; list?: VmInfo[] }): Heartbeat => {
  // A short period, so that the host is down soon after its last beat.
  const b = fakeBeat(id, { accelReason: 'test', vms: o.vms, ts: o.ts, intervalMs: 100, instance });
  if (o.list) b.vmList = o.list;
  else delete b.vmList;
  return b;
};
const vm = (id: string, host: string): VmInfo => ({
  id,
  host,
  state: 'running',
  image: 'tiny',
  memMiB: 256,
  cpus: 1,
  accel: 'tcg',
  createdAt: new Date().toISOString(),
});

/** Heartbeats without a VM list after a change: what the scheduler keeps, and what hostd sends. */
describe('heartbeats: the VM list only in the periodic beat', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let sched: TestScheduler;
  let nc: NatsConnection;
  before(async () => {
    nats = await startNatsServer();
    sched = await startTestScheduler(nats.url);
    nc = await connect({ servers: nats.url });
  });
  after(async () => {
    await nc?.close();
    await sched?.stop();
    await nats?.stop();
  });

  /** Sends beats in order, then waits until the scheduler shows the last one (or `last`) and then the host down. */
  const lastBeatThenDown = async (beats: Heartbeat[], last = beats.at(-1) as Heartbeat): Promise<void> => {
    for (const b of beats) nc.publish(subjects.heartbeat(b.id), JSON.stringify(b));
    const seen = new Date(last.ts).toISOString();
    // Down is a matter of time passing (three missed periods): no event to wait on.
    await pollUntil(
      async () => {
        const h = (await sched.client.call('hosts', {})).hosts.find((x) => x.id === last.id);
        return h?.lastSeen === seen && h.vms === last.vms && !h.alive ? true : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 50, what: `${last.id}: its last beat taken, then down` },
    );
  };
  const lost = async (host: string): Promise<VmInfo[]> => (await sched.client.call('vm.list', {})).vms.filter((v) => v.host === host);

  it('a lost host shows the VMs of its last list, when its later beats carried none', async () => {
    const list = [vm('vm-aaaaaaaaaaa1', 'hb-a'), vm('vm-aaaaaaaaaaa2', 'hb-a')];
    const t = Date.now();
    await lastBeatThenDown([
      beat('hb-a', 'i-1', { ts: t, vms: 2, list }),
      beat('hb-a', 'i-1', { ts: t + 1, vms: 3 }),
      beat('hb-a', 'i-1', { ts: t + 2, vms: 3 }),
    ]);
    const shown = await lost('hb-a');
    assert.deepEqual(
      shown.map((v) => v.id).sort(),
      list.map((v) => v.id),
    );
    assert.ok(
      shown.every((v) => v.state === 'lost'),
      'shown as lost',
    );
  });

  it("an older beat with a list, come after a newer one without (the bucket's, read at start), fills in its list", async () => {
    const list = [vm('vm-ccccccccccc1', 'hb-c')];
    const t = Date.now();
    const slim = beat('hb-c', 'i-1', { ts: t + 1, vms: 1 });
    await lastBeatThenDown([slim, beat('hb-c', 'i-1', { ts: t, vms: 1, list })], slim);
    assert.deepEqual(
      (await lost('hb-c')).map((v) => v.id),
      list.map((v) => v.id),
    );
    // Of another process, an older list is not taken.
    const other = beat('hb-d', 'i-2', { ts: t + 1, vms: 1 });
    await lastBeatThenDown([other, beat('hb-d', 'i-1', { ts: t, vms: 1, list: [vm('vm-ddddddddddd1', 'hb-d')] })], other);
    assert.deepEqual(await lost('hb-d'), []);
  });

  it("the period's beat in the same millisecond as a change's, sent after it, gives its list", async () => {
    // Seen in CI: a change's beat and the period's shared a ts, the list was dropped, and a host
    // killed right after showed one VM fewer as lost than its last list held.
    const old = [vm('vm-eeeeeeeeeee1', 'hb-e')];
    const list = [...old, vm('vm-eeeeeeeeeee2', 'hb-e')];
    const t = Date.now();
    await lastBeatThenDown([
      beat('hb-e', 'i-1', { ts: t, vms: 1, list: old }),
      beat('hb-e', 'i-1', { ts: t + 1, vms: 2 }),
      beat('hb-e', 'i-1', { ts: t + 1, vms: 2, list }),
    ]);
    assert.deepEqual(
      (await lost('hb-e')).map((v) => v.id).sort(),
      list.map((v) => v.id),
    );
  });

  it("a beat of a new hostd process without a list does not take the old process's VMs", async () => {
    const t = Date.now();
    await lastBeatThenDown([
      beat('hb-b', 'i-1', { ts: t, vms: 1, list: [vm('vm-bbbbbbbbbbb1', 'hb-b')] }),
      beat('hb-b', 'i-2', { ts: t + 1, vms: 0 }),
    ]);
    assert.deepEqual(await lost('hb-b'), []);
  });

  it('hostd: the beat after a change has no list; the periodic beat and the hosts bucket do', async () => {
    let host: EphemeralHostd | undefined;
    let sub: Subscription | undefined;
    try {
      host = await startEphemeralHostd({
        natsUrl: nats.url,
        imagesDir: IMAGES_DIR,
        logger: testLogger(),
        hostId: 'hb-real',
        overrides: { dryRun: true, pool: { size: 0 }, heartbeatMs: 1_000 },
      });
      const beats: Heartbeat[] = [];
      sub = nc.subscribe(subjects.heartbeat('hb-real'), { callback: (_e, m) => void beats.push(m.json<Heartbeat>()) });
      await nc.flush();
      const booted = await new HostdClient(nc, 'hb-real', { timeoutMs: 10_000 }).call('vm.boot', { memMiB: 256 });
      const after = Date.now();
      // Both kinds follow the boot: the change's within 100 ms, the period's within 1 s.
      await pollUntil(
        async () =>
          beats.some((b) => b.vms === 1 && !b.vmList) && beats.some((b) => b.vmList?.some((v) => v.id === booted.id)) ? true : undefined,
        { timeoutMs: 5_000, intervalMs: 20, what: 'a change beat and a periodic beat after the boot' },
      );
      const change = beats.find((b) => b.vms === 1 && !b.vmList) as Heartbeat;
      assert.ok(change.ts - after < 500, 'the change is told before the next period');
      // The period's put follows its publish: polled, the bucket has no event of its own here.
      const buckets = await openBuckets(nc);
      await pollUntil(
        async () => ((await buckets.hosts.get('hb-real'))?.json<Heartbeat>().vmList?.some((v) => v.id === booted.id) ? true : undefined),
        { timeoutMs: 5_000, intervalMs: 50, what: 'the hosts bucket entry carrying the list' },
      );
    } finally {
      sub?.unsubscribe();
      await host?.stop();
    }
  });
});
