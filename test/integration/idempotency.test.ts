import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { ConflictError, pollUntil, silentLogger } from '@forky/base';
import { openBuckets, startNatsServer, type Buckets, type NatsServer } from '@forky/bus';
import { BUCKETS, JOBS_CONSUMER, STREAMS, encodeBody, schedContract, subjects, type Job } from '@forky/contract';
import { Idempotency, requestHash } from '@forky/scheduler/internal';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';

/** Writes so far to the jobs stream and to the requests bucket (each write takes the next sequence). */
async function writes(jsm: JetStreamManager): Promise<{ jobs: number; records: number }> {
  const seq = async (s: string): Promise<number> => (await jsm.streams.info(s)).state.last_seq;
  return { jobs: await seq(STREAMS.jobs), records: await seq(`KV_${BUCKETS.requests}`) };
}

describe('idempotent requests across schedulers (real nats-server, KV)', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let buckets: Buckets;
  let jsm: JetStreamManager;
  const revs = async (key: string): Promise<number> => (await buckets.requests.get(key))?.revision ?? 0;
  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    buckets = await openBuckets(nc);
    jsm = await jetstreamManager(nc);
  });
  after(async () => {
    await nc.close();
    await nats.stop();
  });

  it('runs a key once when two schedulers get it at the same time; both get the same reply', async () => {
    const a = new Idempotency(buckets.requests, 'a', 1000, silentLogger());
    const b = new Idempotency(buckets.requests, 'b', 1000, silentLogger());
    let calls = 0;
    const work = async (): Promise<{ n: number }> => {
      calls++;
      await new Promise((r) => setTimeout(r, 200));
      return { n: calls };
    };
    const [ra, rb] = await Promise.all([a.run('key-same-00', 'h1', 10_000, work), b.run('key-same-00', 'h1', 10_000, work)]);
    assert.equal(calls, 1);
    assert.deepEqual(ra, rb);
    assert.deepEqual(await b.run('key-same-00', 'h1', 10_000, work), ra, 'a repeat gets the stored reply');
    assert.equal(calls, 1);
  });

  it('takes over a key whose owner died once its lease runs out', async () => {
    // A scheduler claimed the key and died: nobody renews its lease.
    await buckets.requests.create(
      'key-dead-00',
      JSON.stringify({ state: 'pending', hash: 'h2', owner: 'dead', leaseUntil: Date.now() + 400 }),
    );
    const b = new Idempotency(buckets.requests, 'b', 1000, silentLogger());
    const t0 = Date.now();
    const r = await b.run('key-dead-00', 'h2', 10_000, async () => 'done by b');
    assert.equal(r, 'done by b');
    assert.ok(Date.now() - t0 >= 350, 'waited for the lease to run out');
    const entry = (await buckets.requests.get('key-dead-00'))?.json<{ state: string; owner: string }>();
    assert.deepEqual({ state: entry?.state, owner: entry?.owner }, { state: 'done', owner: 'b' });
  });

  it('refuses a key reused for a different request, and lets a failed one be retried', async () => {
    const a = new Idempotency(buckets.requests, 'a', 1000, silentLogger());
    await a.run('key-reuse-0', 'h3', 10_000, async () => 1);
    await assert.rejects(
      a.run('key-reuse-0', 'other', 10_000, async () => 2),
      ConflictError,
    );
    await assert.rejects(
      a.run('key-fail-00', 'h4', 10_000, async () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    assert.equal(await a.run('key-fail-00', 'h4', 10_000, async () => 'second try'), 'second try');
  });

  it('an unclaimed run writes only its outcome; one that lasts claims the key while it runs', async () => {
    const a = new Idempotency(buckets.requests, 'a', 600, silentLogger(), { leader: { nc, bucket: BUCKETS.requests } });
    assert.equal(await a.unrecorded('key-short-0'), true, 'read from the leader: nothing under the key');
    const records = async (): Promise<number> => (await jsm.streams.info(`KV_${BUCKETS.requests}`)).state.last_seq;
    const w0 = await records();
    const waited = a.outcome<string>('key-short-0', 'h5', 0, 5_000);
    assert.equal(await a.runUnclaimed('key-short-0', 'h5', async () => 'quick'), 'quick');
    assert.equal(await waited, 'quick', 'the waiter here is told at once');
    assert.equal((await records()) - w0, 1, 'one write: the outcome');
    assert.equal(await a.unrecorded('key-short-0'), false);

    let during: { state?: string; owner?: string } | undefined;
    const reply = await a.runUnclaimed('key-long-00', 'h6', async () => {
      during = await pollUntil(async () => (await buckets.requests.get('key-long-00'))?.json<{ state: string; owner: string }>(), {
        timeoutMs: 5_000,
        intervalMs: 20,
        what: 'the lasting run claiming its key',
      });
      return 'slow';
    });
    assert.equal(reply, 'slow');
    assert.deepEqual({ state: during?.state, owner: during?.owner }, { state: 'pending', owner: 'a' });
    assert.equal((await buckets.requests.get('key-long-00'))?.json<{ state: string }>().state, 'done');
  });

  it("a waiter learns another scheduler's outcome from its watch of the bucket, well before its 2 s read", async () => {
    const a = new Idempotency(buckets.requests, 'a', 1000, silentLogger());
    const b = new Idempotency(buckets.requests, 'b', 1000, silentLogger(), { watch: true, leader: { nc, bucket: BUCKETS.requests } });
    try {
      // The watch follows writes from when it started: give it a moment to be in place.
      await pollUntil(async () => ((await jsm.consumers.list(`KV_${BUCKETS.requests}`).next()).length > 0 ? true : undefined), {
        timeoutMs: 5_000,
        what: 'the watch of the bucket',
      });
      const since = await revs('key-far-000');
      const t0 = performance.now();
      const waited = b.outcome<string>('key-far-000', 'h7', since, 5_000);
      const conflict = b.outcome<string>('key-far-000', 'not-h7', since, 5_000).catch((e: unknown) => e);
      await a.run('key-far-000', 'h7', 5_000, async () => 'from a');
      assert.equal(await waited, 'from a');
      assert.ok(performance.now() - t0 < 1_500, `told in ${Math.round(performance.now() - t0)} ms`);
      assert.ok((await conflict) instanceof ConflictError, 'a waiter for a different request under the key gets CONFLICT');
    } finally {
      b.stop();
    }
  });
});

describe('keyed requests through a scheduler: the job and the outcome are the only writes', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let jsm: JetStreamManager;
  const vmsOf = async (): Promise<string[]> => (await host.client.call('vm.list', {})).vms.map((v) => v.id).sort();
  const alive = async (s: TestScheduler): Promise<void> =>
    void (await pollUntil(
      async () => ((await s.client.call('hosts', {})).hosts.some((h) => h.id === 'idem-h1' && h.alive) ? true : undefined),
      {
        timeoutMs: 20_000,
        what: 'the host reporting in',
      },
    ));

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'idem-h1', overrides: { dryRun: true, pool: { size: 0 } } });
    sched = await startTestScheduler(nats.url);
    jsm = await jetstreamManager(sched.nc);
    await alive(sched);
  });
  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it('a keyed boot writes its job and its outcome; a repeat and a conflict under its key write nothing', async () => {
    const w0 = await writes(jsm);
    const vm = await sched.client.call('vm.boot', { key: 'idem-boot-00001', memMiB: 256 });
    const w1 = await writes(jsm);
    assert.deepEqual({ jobs: w1.jobs - w0.jobs, records: w1.records - w0.records }, { jobs: 1, records: 1 });
    assert.deepEqual(await sched.client.call('vm.boot', { key: 'idem-boot-00001', memMiB: 256 }), vm, 'the first reply');
    await assert.rejects(sched.client.call('vm.boot', { key: 'idem-boot-00001', memMiB: 512 }), { code: 'CONFLICT' });
    assert.deepEqual(await writes(jsm), w1, 'answered from the record');
    assert.deepEqual(await vmsOf(), [vm.id]);
  });

  it('a key sent twice at once is queued once and boots once', async () => {
    const before = await vmsOf();
    const w0 = await writes(jsm);
    const body = { key: 'idem-twice-0001', memMiB: 256 };
    const [a, b] = await Promise.all([sched.client.call('vm.boot', body), sched.client.call('vm.boot', body)]);
    assert.deepEqual(a, b);
    const w1 = await writes(jsm);
    assert.deepEqual({ jobs: w1.jobs - w0.jobs, records: w1.records - w0.records }, { jobs: 1, records: 1 });
    assert.deepEqual(await vmsOf(), [...before, a.id].sort());
  });

  it('a job of a key held by a silent worker does not block the key once its record says it failed; it is not run twice', async () => {
    const key = 'idem-held-00001';
    const req = schedContract['vm.boot'].request.parse({ memMiB: 256, key });
    const hash = requestHash('vm.boot', req);
    // A job of the key is out with a worker that says nothing (as one whose run ended would), and the record says it failed.
    await sched.stop();
    const h = headers();
    const job: Job = { v: 1, endpoint: 'vm.boot', key, hash, request: req, submittedAt: new Date().toISOString() };
    await jetstream(host.nc).publish(`${subjects.jobs.slice(0, -1)}key.${key}`, encodeBody(job, 'json'), {
      headers: h,
      expect: { lastSubjectSequence: 0 },
    });
    const held = await (await jetstream(host.nc).consumers.get(STREAMS.jobs, JOBS_CONSUMER)).next({ expires: 5_000 });
    assert.ok(held, 'the test holds the job');
    const { requests } = await openBuckets(host.nc);
    await requests.put(
      key,
      JSON.stringify({ state: 'failed', hash, owner: 'gone', leaseUntil: 0, error: { code: 'UNAVAILABLE', message: 'host gone' } }),
    );
    sched = await startTestScheduler(nats.url);
    jsm = await jetstreamManager(sched.nc);
    await alive(sched);
    const before = await vmsOf();
    const vm = await sched.client.call('vm.boot', { memMiB: 256, key }, { timeoutMs: 20_000 });
    assert.deepEqual(await vmsOf(), [...before, vm.id].sort(), 'asked again after the failure: booted');
    // The held job comes back: its key is done, so it is not run again.
    held.nak();
    await pollUntil(async () => ((await jsm.streams.info(STREAMS.jobs)).state.messages === 0 ? true : undefined), {
      timeoutMs: 20_000,
      what: 'the held job taken and finished',
    });
    assert.deepEqual(await vmsOf(), [...before, vm.id].sort(), 'booted once');
  });
});
