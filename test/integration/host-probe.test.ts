import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ForkyError, pollUntil } from '@forky/base';
import { startFakeCluster, type FakeCluster } from '../helpers/fake-cluster.js';
import type { FakeHostd } from '../helpers/fake-hostd.js';
import { refused } from '../helpers/errors.js';

/**
 * The scheduler's liveness rule for calls under way (issue 21: a host busy with 100 TCG guests
 * beat late and its fork was given up). A host whose beats stopped is asked directly (host.ping)
 * before its calls are given up: one that answers keeps them, one that does not answer loses them.
 * Fake hosts beat every second; a call is given up on liveness once past its start-by (3 s).
 */
describe('liveness: a quiet host is asked before its calls are given up', { timeout: 120_000 }, () => {
  let c: FakeCluster;
  before(async () => {
    c = await startFakeCluster();
  });
  after(async () => {
    await c?.stop();
  });

  const host = async (id: string): Promise<FakeHostd> => {
    const h = await c.host(id);
    await seen(id, true);
    return h;
  };
  const seen = (id: string, alive: boolean): Promise<true> =>
    pollUntil(
      async () => ((await c.sched.client.call('hosts', {})).hosts.some((h) => h.id === id && h.alive === alive) ? true : undefined),
      {
        timeoutMs: 20_000,
        what: `host ${id} seen ${alive ? 'up' : 'down'}`,
      },
    );
  /** Waits (bounded) until `h` has taken `n` boots. */
  const reached = (h: FakeHostd, n: number): Promise<true> =>
    pollUntil(async () => (h.count('vm.boot') === n ? true : undefined), { timeoutMs: 10_000, what: `boot ${n} reaching the host` });
  /** `h` stops beating, is seen down, and is pinged twice (past the call's start-by, again as the silence goes on). */
  const quietThroughPings = async (h: FakeHostd): Promise<void> => {
    h.quiet();
    await seen(h.id, false);
    await pollUntil(async () => (h.count('host.ping') >= 2 ? true : undefined), { timeoutMs: 20_000, what: 'two pings of the quiet host' });
  };
  /** Holds `h`'s vm.boot replies until the returned release is called. */
  const holdBoots = (h: FakeHostd): (() => void) => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    h.after['vm.boot'] = () => gate;
    return release;
  };

  it('a host that stops beating but answers host.ping keeps its call: the boot it was sent returns', async () => {
    const h = await host('probe-busy');
    const release = holdBoots(h);
    const boot = c.sched.client.call('vm.boot', { host: h.id });
    await reached(h, 1);
    await quietThroughPings(h);
    release();
    const vm = await boot;
    assert.equal(vm.host, h.id);
    assert.equal(h.vms.size, 1, 'the one VM it was asked for');
  });

  it('the pings do not carry the deadline of the call that started the watch: that call ends, the long one is kept', async () => {
    const h = await host('probe-ctx');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    // The first boot to arrive answers once the second has arrived too (so the watch the first
    // started is still on), under a 3 s deadline; the second is held.
    let arrived = 0;
    const second = new Promise<void>((resolve) => {
      h.before['vm.boot'] = (req) => {
        req['n'] = ++arrived;
        if (arrived === 2) resolve();
      };
    });
    h.after['vm.boot'] = (req) => (req['n'] === 1 ? second : gate);
    const short = c.sched.client.call('vm.boot', { host: h.id }, { timeoutMs: 3_000 });
    const long = c.sched.client.call('vm.boot', { host: h.id });
    await short;
    await reached(h, 2);
    await quietThroughPings(h);
    release();
    assert.equal((await long).host, h.id);
    assert.equal(h.vms.size, 2);
  });

  it('a quiet host whose ping gets an error reply (a ping it read too late) is there: its call is kept', async () => {
    const h = await host('probe-late');
    const release = holdBoots(h);
    h.before['host.ping'] = () => {
      throw new ForkyError('TIMEOUT', 'read past its deadline');
    };
    const boot = c.sched.client.call('vm.boot', { host: h.id });
    await reached(h, 1);
    await quietThroughPings(h);
    release();
    assert.equal((await boot).host, h.id);
  });

  it('a host that stops beating and answering: its call is given up UNAVAILABLE, saying what the ping found', async () => {
    const h = await host('probe-dead');
    holdBoots(h);
    const boot = refused(c.sched.client.call('vm.boot', { host: h.id }));
    await reached(h, 1);
    const t0 = Date.now();
    await h.down();
    const e = await boot;
    assert.equal(e.code, 'UNAVAILABLE', e.message);
    assert.match(
      e.message,
      /host probe-dead stopped reporting .*asked directly: no service answers on forky\.v1\.host\.probe-dead\.host\.ping/,
    );
    // No responders is known at once: given up about its start-by (4 s, ticks of 0.5 s); a ping
    // left to time out would add its 5 s (9 s).
    assert.ok(Date.now() - t0 < 7_000, `given up ${Date.now() - t0} ms after the host went`);
  });
});
