import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { silentLogger } from '@forky/base';
import { openBuckets, startNatsServer, type NatsServer } from '@forky/bus';
import { followPeers, ownAddresses, peerAddresses, urlAddresses } from '@forky/hostd/internal';

describe('other hosts’ addresses, from the hosts bucket, for the egress filter', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let buckets: Awaited<ReturnType<typeof openBuckets>>;

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    buckets = await openBuckets(nc, { replicas: 1 });
    const put = (k: string, v: unknown): Promise<unknown> => buckets.hosts.put(k, typeof v === 'string' ? v : JSON.stringify(v));
    await put('h-self', { id: 'h-self', addrs: ['10.1.1.1'] });
    await put('h-b', { id: 'h-b', addrs: ['10.9.9.9', 'fd00::9'], other: 'fields are ignored' });
    // Hostile or broken entries: each is skipped, the rest are read.
    await put('h-c', { id: 'h-c', addrs: ['0.0.0.0/0'] });
    await put('h-d', { id: 'h-x', addrs: ['10.8.8.8'] });
    await put('h-e', 'not json {');
    await put('h-f', { id: 'h-f', addrs: Array.from({ length: 65 }, (_, i) => `10.7.0.${i}`) });
    await put('h-g', { id: 'h-g' });
  });
  after(async () => {
    await nc?.close();
    await nats?.stop();
  });

  it('reads every other host’s valid addresses and skips itself and bad entries', async () => {
    assert.deepEqual((await peerAddresses(buckets.hosts, 'h-self', silentLogger())).sort(), ['10.9.9.9', 'fd00::9']);
  });

  it('hands them to the filter at once, leaving out this host’s own addresses', async () => {
    const own = ownAddresses()[0];
    if (own) await buckets.hosts.put('h-own', JSON.stringify({ id: 'h-own', addrs: [own] }));
    const got: string[][] = [];
    const stop = await followPeers(buckets.hosts, 'h-self', { setClusterHosts: async (a) => void got.push([...a].sort()) }, silentLogger());
    stop();
    assert.deepEqual(got, [['10.9.9.9', 'fd00::9']]);
  });

  it('discovered NATS servers are refused too: the addresses of their URLs', () => {
    assert.deepEqual(urlAddresses(['10.0.0.5:4222', 'nats://[fd00::5]:4222', 'nats.example:4222', 'junk', '192.0.2.9']), [
      '10.0.0.5',
      'fd00::5',
      '192.0.2.9',
    ]);
  });

  it('a heartbeat address list is bounded and addresses only', () => {
    const own = ownAddresses();
    assert.ok(own.length <= 64);
    for (const a of own) assert.match(a, /^[0-9a-f.:]+$/i);
  });
});
