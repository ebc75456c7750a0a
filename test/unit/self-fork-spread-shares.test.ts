import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ForkyError, silentLogger } from '@forky/base';
import type { ForkRequest, ForkResult, Heartbeat, SnapshotInfo } from '@forky/contract';
import { hostStatus, schedFork } from '@forky/scheduler/internal';
import { fakeSnapshot, forkHostBeat } from '../helpers/fake-fork-cluster.js';

/**
 * Review R3 item 8, on the scheduler's cross-host fork over our own fake hosts (no NATS): a fork
 * that fails destroys the shares made, and a share that timed out on a host still up is asked
 * there again under its own key (so it cannot be made twice, two VMs each told `child k`).
 */
const SNAP = 'snap-shares00000001';
const beat = (id: string): Heartbeat => forkHostBeat(id, SNAP);
const snapshot = (host: string): SnapshotInfo => fakeSnapshot(SNAP, host, 'vm-shares0000001');

type Call = { host: string; endpoint: string; key?: string; id?: string };
/** A scheduler context over fake hosts; `fail(host, n)` says how the n-th fork call of a host fails, if it does. */
function cluster(
  hosts: string[],
  fail: (host: string, n: number) => ForkyError | undefined,
  /** How the n-th snapshot.fetch of a host fails, if it does. */
  failFetch: (host: string, n: number) => ForkyError | undefined = () => undefined,
) {
  const calls: Call[] = [];
  const statuses = hosts.map((h) => hostStatus(beat(h), Date.now())!);
  const call = async (host: string, endpoint: string, req: Record<string, unknown>): Promise<unknown> => {
    calls.push({ host, endpoint, ...(req.key ? { key: req.key as string } : {}), ...(req.id ? { id: req.id as string } : {}) });
    if (endpoint === 'snapshot.show') return snapshot(host);
    const fetchErr =
      endpoint === 'snapshot.fetch' && failFetch(host, calls.filter((c) => c.host === host && c.endpoint === endpoint).length);
    if (fetchErr) throw fetchErr;
    if (endpoint === 'snapshot.publish' || endpoint === 'snapshot.fetch')
      return { id: SNAP, host, parts: 1, moved: 0, bytes: 0, nominalBytes: 0, ms: 1 };
    if (endpoint === 'vm.destroy') return {};
    if (endpoint === 'fork.abandon') return { found: 'none', destroyed: [] };
    const r = req as unknown as ForkRequest;
    const err = fail(host, calls.filter((c) => c.host === host && c.endpoint === 'fork').length);
    if (err) throw err;
    // Children named by the key: a share asked again under its key is the same share (a replay).
    const children = Array.from({ length: r.count }, (_, i) => ({ id: `vm-${(r.key ?? '').slice(1, 10).toLowerCase()}${i}`, host }));
    return { snapshot: snapshot(host), children, timings: { snapshotMs: 0, totalMs: 1, childMs: children.map(() => 1) } };
  };
  const ctx = {
    hosts: {
      statuses: () => statuses,
      onHost: (host: string, fn: (c: unknown) => Promise<unknown>) =>
        fn({ call: (e: string, q: Record<string, unknown>) => call(host, e, q) }),
      client: (host: string) => ({ call: (e: string, q: Record<string, unknown>) => call(host, e, q) }),
    },
    childCostMiB: 1,
    log: silentLogger(),
    locate: async () => hosts[0]!,
  };
  return {
    calls,
    /** `last`: the job's last delivery (the default here), or one it will be tried again after. */
    fork: (count: number, last = true) =>
      schedFork(ctx as never, { source: SNAP, count, spread: true } as never, 'k'.repeat(20), last) as Promise<ForkResult>,
  };
}

describe('self-fork spread shares (review R3 item 8)', () => {
  it('a fork that fails destroys the children of the shares that were made', async () => {
    const c = cluster(['sa', 'sb'], (h) => (h === 'sa' ? new ForkyError('UNAVAILABLE', 'home fails its share') : undefined));
    await assert.rejects(c.fork(2), (e: ForkyError) => e.code === 'UNAVAILABLE');
    const made = c.calls.filter((x) => x.host === 'sb' && x.endpoint === 'fork');
    assert.equal(made.length, 1);
    assert.deepEqual(
      c.calls.filter((x) => x.endpoint === 'vm.destroy').map((x) => [x.host, x.id]),
      [['sb', `vm-${made[0]!.key!.slice(1, 10).toLowerCase()}0`]],
    );
    // The home's share failed UNAVAILABLE: it may still be made there, so it is abandoned under its
    // key; sb's, made, is abandoned too (its host forgets the key: a later fork under it is not
    // handed dead children), and destroyed by id where the abandon did not (this fake's says none).
    const home = c.calls.find((x) => x.host === 'sa' && x.endpoint === 'fork');
    assert.deepEqual(
      c.calls
        .filter((x) => x.endpoint === 'fork.abandon')
        .map((x) => [x.host, x.key])
        .sort(),
      [
        ['sa', home!.key],
        ['sb', made[0]!.key],
      ],
    );
  });

  it('a share that timed out on a host still up is asked there again under its own key, placed nowhere else', async () => {
    const c = cluster(['sa', 'sb', 'sc'], (h, n) => (h === 'sb' && n === 1 ? new ForkyError('TIMEOUT', 'no reply in time') : undefined));
    const r = await c.fork(3);
    assert.equal(r.children.length, 3);
    const forks = c.calls.filter((x) => x.endpoint === 'fork');
    const onB = forks.filter((x) => x.host === 'sb');
    assert.equal(onB.length, 2, 'asked again on its own host');
    assert.equal(onB[0]!.key, onB[1]!.key, 'under the same key (a replay there)');
    assert.deepEqual(
      ['sa', 'sc'].map((h) => forks.filter((x) => x.host === h).length),
      [1, 1],
      'the others got their own share only',
    );
    assert.equal(c.calls.filter((x) => x.endpoint === 'vm.destroy').length, 0);
  });

  it('a share timed out, whose re-ask fails before its fork is sent, is abandoned where it timed out once placed elsewhere', async () => {
    const c = cluster(
      ['sa', 'sb', 'sc'],
      (h, n) => (h === 'sb' && n === 1 ? new ForkyError('TIMEOUT', 'no reply in time') : undefined),
      (h, n) => (h === 'sb' && n === 2 ? new ForkyError('INTERNAL', 'the fetch failed') : undefined),
    );
    const r = await c.fork(3);
    assert.equal(r.children.length, 3);
    assert.equal(
      r.children.some((x) => x.host === 'sb'),
      false,
    );
    // The first fork there may still finish: its key is abandoned there (once), not forgotten with the failed re-ask.
    const first = c.calls.find((x) => x.host === 'sb' && x.endpoint === 'fork');
    assert.deepEqual(
      c.calls.filter((x) => x.endpoint === 'fork.abandon').map((x) => [x.host, x.key]),
      [['sb', first!.key]],
    );
  });

  it('R1 #1: a fork tried again (transient, not the last delivery) keeps its shares; the retry gets them alive, once', async () => {
    let first = true;
    const c = cluster(['sa', 'sb'], (h) => (h === 'sa' && first ? new ForkyError('UNAVAILABLE', 'home fails its share') : undefined));
    await assert.rejects(c.fork(4, false), (e: ForkyError) => e.code === 'UNAVAILABLE');
    assert.equal(c.calls.filter((x) => x.endpoint === 'vm.destroy').length, 0, 'kept for the retry');
    assert.equal(c.calls.filter((x) => x.endpoint === 'fork.abandon').length, 0, 'none abandoned: the retry asks under the same keys');
    first = false;
    // The job's next delivery, same key: sb's share is replayed (same children), sa makes its own.
    const r = await c.fork(4, false);
    assert.equal(r.children.length, 4);
    assert.equal(new Set(r.children.map((x) => x.id)).size, 4);
    assert.equal(c.calls.filter((x) => x.endpoint === 'vm.destroy').length, 0, 'none of its children destroyed');
  });

  it('R1 #1: a failure that is not tried again (not transient) destroys the shares made, last delivery or not', async () => {
    const c = cluster(['sa', 'sb'], (h) => (h === 'sa' ? new ForkyError('INCOMPATIBLE', 'home refuses the snapshot') : undefined));
    await assert.rejects(c.fork(2, false), (e: ForkyError) => e.code === 'INCOMPATIBLE');
    assert.deepEqual(
      c.calls.filter((x) => x.endpoint === 'vm.destroy').map((x) => x.host),
      ['sb'],
    );
    const made = c.calls.find((x) => x.host === 'sb' && x.endpoint === 'fork');
    assert.deepEqual(
      c.calls.filter((x) => x.endpoint === 'fork.abandon').map((x) => [x.host, x.key]),
      [['sb', made!.key]],
      "only the share made: a host's own refusal left nothing to abandon",
    );
    // A timeout that is the request's own fault (`final`): the job does not try it again either.
    const own = new ForkyError('TIMEOUT', 'never ready', { details: { final: true } });
    const final = cluster(['sa', 'sb'], (h) => (h === 'sa' ? own : undefined));
    await assert.rejects(final.fork(2, false), (e: ForkyError) => e.code === 'TIMEOUT');
    assert.equal(final.calls.filter((x) => x.endpoint === 'vm.destroy').length, 1);
  });
});
