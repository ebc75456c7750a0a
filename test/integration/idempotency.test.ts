import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { ConflictError, silentLogger } from '@forky/base';
import { openBuckets, startNatsServer, type Buckets, type NatsServer } from '@forky/bus';
import { Idempotency } from '@forky/scheduler/internal';

describe('idempotent requests across schedulers (real nats-server, KV)', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let buckets: Buckets;
  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    buckets = await openBuckets(nc);
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
});
