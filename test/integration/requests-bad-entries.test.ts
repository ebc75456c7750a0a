import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { pino } from 'pino';
import { openBuckets, startNatsServer, type Buckets, type NatsServer } from '@forky/bus';
import { Idempotency } from '@forky/scheduler/internal';

/** Entries in the requests bucket that are not records: written by hand, by garbage, by another version. */
const NOT_RECORDS: Array<string | Uint8Array> = [
  '{}',
  'null',
  '',
  '{"state":"done"}',
  '{"state":"done","hash":1,"owner":"x","leaseUntil":0}',
  Uint8Array.from([0xff, 0x7b]),
  '{"state":"pending","hash":"h1","owner":"x","leaseUntil":"soon"}',
];

describe('the requests bucket: a record that is not one counts as none', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let buckets: Buckets;
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    buckets = await openBuckets(nc);
  });
  after(async () => {
    await nc.close();
    await nats.stop();
  });

  it('peek sees nothing, run takes the key over and records its reply, and outcome waits for a real record', async () => {
    const idem = new Idempotency(buckets.requests, 'a', 1000, log);
    for (const [i, bad] of NOT_RECORDS.entries()) {
      const key = `bad-entry-${i}`;
      await buckets.requests.put(key, bad);
      assert.equal(await idem.peek(key), undefined, `${JSON.stringify(bad)}: no record`);
      // A waiter started before the run sees the garbage write and keeps waiting for the real outcome.
      const since = (await buckets.requests.get(key))?.revision ?? 0;
      const waiting = idem.outcome<{ n: number }>(key, 'h1', since - 1, 10_000);
      let calls = 0;
      const reply = await idem.run(key, 'h1', 5_000, () => Promise.resolve({ n: ++calls }));
      assert.deepEqual(reply, { n: 1 });
      assert.deepEqual(await waiting, { n: 1 });
      assert.equal((await idem.peek(key))?.entry.state, 'done', 'the garbage was replaced by the record');
    }
    const bad = lines.filter((l) => l.includes('a bad entry was ignored'));
    assert.ok(bad.length >= NOT_RECORDS.length, `${bad.length} bad entries logged`);
    assert.ok(
      bad.every((l) => !l.slice(0, -1).includes('\n') && l.length < 1000),
      'each one bounded line',
    );
  });
});
