import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CapacityError, ForkyError, NotFoundError, pollUntil } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { subjects, type HostStatus, type VmInfo } from '@forky/contract';
import { hostStatus, pickHost, placeChildren } from '@forky/scheduler/internal';
import { fakeHostInfo } from '../helpers/fake-beat.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

const host = (id: string, free: number, extra: Partial<HostStatus> = {}): HostStatus => ({
  ...fakeHostInfo(id, { accelReason: '', qemuVersion: '7.2.22', memTotalMiB: 24000, memFreeMiB: free }),
  alive: true,
  lastSeen: new Date().toISOString(),
  ...extra,
});

const VM: VmInfo = {
  id: 'vm-aaaaaaaaaaa0',
  host: 'pl-h1',
  state: 'running',
  image: 'tiny',
  memMiB: 256,
  cpus: 1,
  accel: 'tcg',
  createdAt: '2026-01-01T00:00:00.000Z',
};

describe('placement', () => {
  it('keeps children at home by default, and on a pinned host when asked', () => {
    const hs = [host('a', 1000), host('b', 9000)];
    assert.deepEqual([...placeChildren(hs, 'a', 3, 48, {})], [['a', 3]]);
    assert.deepEqual([...placeChildren(hs, 'a', 3, 48, { host: 'b' })], [['b', 3]]);
    assert.throws(() => placeChildren(hs, 'a', 1, 48, { host: 'zz' }), NotFoundError);
    assert.throws(() => placeChildren([host('a', 1000), host('b', 9000, { alive: false })], 'a', 1, 48, { host: 'b' }), /down/);
  });

  it('spreads evenly over live hosts, home first, skipping dead and full ones', () => {
    const hs = [host('a', 5000), host('b', 5000), host('c', 5000), host('d', 9000, { alive: false })];
    assert.deepEqual([...placeChildren(hs, 'b', 6, 48, { spread: true })].sort(), [
      ['a', 2],
      ['b', 2],
      ['c', 2],
    ]);
    const full = [host('a', 5000), host('b', 60)];
    assert.deepEqual([...placeChildren(full, 'a', 3, 48, { spread: true })].sort(), [
      ['a', 2],
      ['b', 1],
    ]);
    assert.throws(() => placeChildren([host('a', 100)], 'a', 5, 48, { spread: true }), CapacityError);
  });

  it('debits what a host says its children really cost', () => {
    // b's children cost 500 MiB each: after 2 it has no room left, so the rest go to a.
    const hs = [host('a', 5000, { childPssMiB: 50 }), host('b', 1000, { childPssMiB: 500 })];
    assert.deepEqual([...placeChildren(hs, 'a', 6, 48, { spread: true })].sort(), [
      ['a', 4],
      ['b', 2],
    ]);
  });

  it('picks the live host with the most free memory, and says why none fits', () => {
    assert.equal(pickHost([host('a', 1000), host('b', 3000)], { memMiB: 320, count: 1 }), 'b');
    assert.throws(() => pickHost([host('a', 100)], { memMiB: 320, count: 1 }), /no host has 320 MiB free/);
    assert.throws(
      () => pickHost([host('a', 9000, { alive: false })], { memMiB: 320, count: 1 }),
      (e: unknown) => e instanceof ForkyError && e.code === 'UNAVAILABLE',
    );
  });

  it('spreads placements over hosts that look alike, between heartbeats', () => {
    const hosts = Array.from({ length: 10 }, (_, i) => host(`h${i}`, 8000));
    const used = new Set(Array.from({ length: 200 }, () => pickHost(hosts, { memMiB: 320, count: 1 })));
    assert.ok(used.size >= 8, `200 placements used ${used.size} of 10 equal hosts`);
    // The least free host is never one of two choices' winners.
    const skewed = [...hosts.slice(0, 9), host('small', 400)];
    for (let k = 0; k < 200; k++) assert.notEqual(pickHost(skewed, { memMiB: 320, count: 1 }), 'small');
  });

  it('places GPU VMs only where GPUs are free, pinned or not, and says how many are', () => {
    const gpu = (total: number, free: number) => ({ gpus: { total, free } });
    const hs = [host('big', 90000), host('g', 1000, gpu(2, 1)), host('dead', 1000, { ...gpu(4, 4), alive: false })];
    assert.equal(pickHost(hs, { memMiB: 320, count: 1, gpus: 1 }), 'g');
    assert.equal(pickHost(hs, { memMiB: 320, count: 1 }), 'big');
    const over = (): string => pickHost(hs, { memMiB: 320, count: 1, gpus: 2 });
    assert.throws(over, (e: unknown) => e instanceof CapacityError && e.details?.field === 'gpus' && /g 1 of 2 free/.test(e.message));
    assert.throws(
      () => pickHost(hs, { memMiB: 320, count: 1, gpus: 1 }, 'big'),
      (e: unknown) => e instanceof CapacityError && /host big has 0 free GPU/.test(e.message),
    );
    assert.throws(() => pickHost([host('x', 9000)], { memMiB: 320, count: 1, gpus: 1 }), /no live host has a GPU bound to vfio-pci/);
  });

  it('marks a host down after three missed heartbeats', () => {
    const { alive: _a, lastSeen: _l, ...info } = host('a', 1000);
    const beat = (age: number) => ({ ...info, ts: Date.now() - age, intervalMs: 2000, instance: 'i1', vmList: [], snapshotIds: [] });
    assert.equal(hostStatus(beat(5000), Date.now())?.alive, true);
    assert.equal(hostStatus(beat(7000), Date.now())?.alive, false);
    assert.equal(hostStatus({ nonsense: true }, Date.now()), undefined);
  });
});

describe('heartbeats as a scheduler reads them (real nats-server, scheduler)', { timeout: 30_000 }, () => {
  let nats: NatsServer;
  let sched: TestScheduler;
  before(async () => {
    nats = await startNatsServer();
    sched = await startTestScheduler(nats.url);
  });
  after(async () => {
    await sched?.stop();
    await nats?.stop();
  });

  it('a beat whose VM list is not valid still reports its host; its VMs, read once it is down, count as none', async () => {
    const { alive: _a, lastSeen: _l, ...info } = host('pl-h1', 4000);
    const vm = (id: string, on: string): VmInfo => ({ ...VM, id, host: on });
    // Beats every 100 ms: down 300 ms after the last one.
    const beat = (id: string, vmList: unknown[]): string =>
      JSON.stringify({ ...info, id, ts: Date.now(), intervalMs: 100, instance: 'i1', vmList, snapshotIds: [] });
    const good = [vm('vm-aaaaaaaaaaa1', 'pl-h1'), vm('vm-aaaaaaaaaaa2', 'pl-h1')];
    sched.nc.publish(subjects.heartbeat('pl-h1'), beat('pl-h1', good));
    sched.nc.publish(subjects.heartbeat('pl-h2'), beat('pl-h2', [vm('vm-aaaaaaaaaaa3', 'pl-h2'), { id: 'not a VM' }]));
    sched.nc.publish(
      subjects.heartbeat('pl-h3'),
      beat('pl-h3', [vm('vm-aaaaaaaaaaa4', 'pl-h3')]).replace('"instance"', '"unknownField":1,"instance"'),
    );
    const seen = await pollUntil(
      async () => {
        const { hosts } = await sched.client.call('hosts', {});
        return hosts.length >= 2 ? hosts : undefined;
      },
      { timeoutMs: 5_000, intervalMs: 20, what: 'the hosts in the view' },
    );
    assert.deepEqual(
      seen.map((h) => h.id),
      ['pl-h1', 'pl-h2'],
      'a beat with a bad VM still counts; one with a field the contract does not have does not',
    );
    await pollUntil(async () => ((await sched.client.call('hosts', {})).hosts.every((h) => !h.alive) ? true : undefined), {
      timeoutMs: 5_000,
      intervalMs: 50,
      what: 'both hosts down',
    });
    const { vms } = await sched.client.call('vm.list', {});
    assert.deepEqual(
      vms.map((v) => [v.id, v.state]),
      good.map((v) => [v.id, 'lost']),
      "a down host's VMs are shown lost; a VM list that is not valid shows none",
    );
  });
});
