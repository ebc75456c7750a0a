import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import { withDeadline } from '@forky/base';
import { HostdClient, inboxPrefixOf, newClusterAuth, startNatsServer, type ClusterAuth, type NatsServer } from '@forky/bus';
import { jetstream } from '@nats-io/jetstream';
import { BUCKETS, JOBS_CONSUMER, STREAMS, subjects } from '@forky/contract';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

/** Resolves with the error a subscription was closed with (a permission violation), within 5 s. */
async function closedWith(sub: Subscription): Promise<Error | undefined> {
  return (await withDeadline(sub.closed, 5000, 'subscription closed by the server')) as Error | undefined;
}

/** The first permission error the server reports on this connection, within 5 s. */
async function nextPermissionError(nc: NatsConnection): Promise<string> {
  return withDeadline(
    (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'error' && /Permissions Violation/i.test(String(s.error))) return String(s.error);
      }
      throw new Error('status stream ended');
    })(),
    5000,
    'permission error',
  );
}

describe('authentication and per-host authorization (real nats-server with users)', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let auth: ClusterAuth;
  let h1: TestHost;
  let sched: TestScheduler;
  const as = (who: { user: string; pass: string }): Promise<NatsConnection> =>
    connect({ servers: nats.url, user: who.user, pass: who.pass, inboxPrefix: inboxPrefixOf(who.user) });

  before(async () => {
    auth = newClusterAuth(['h1', 'h2']);
    nats = await startNatsServer({ auth });
    const h1c = auth.hosts.h1 as { user: string; pass: string };
    const op = { user: auth.operator.user, pass: auth.operator.pass, inboxPrefix: inboxPrefixOf(auth.operator.user) };
    h1 = await startTestHost(nats.url, { hostId: 'h1', overrides: { nats: { servers: [nats.url], ...h1c } }, clientOptions: op });
    sched = await startTestScheduler(nats.url, { nats: { user: auth.scheduler.user, pass: auth.scheduler.pass }, clientOptions: op });
  });
  after(async () => {
    await sched?.stop();
    await h1?.stop();
    await nats?.stop();
  });

  it('a host, a scheduler and the operator work with their own users', async (t) => {
    const info = await h1.client.call('host.info', {});
    assert.equal(info.id, 'h1');
    const hosts = await sched.client.call('hosts', {});
    assert.ok(
      hosts.hosts.some((h) => h.id === 'h1' && h.alive),
      'the scheduler sees h1 through the hosts bucket',
    );
    // The scheduler user writes the templates bucket (template.create, the reaper).
    const sc = await as(auth.scheduler);
    try {
      await sched.client.call('template.list', {});
      const tpl = await new Kvm(sc).open(BUCKETS.templates);
      await tpl.put('retired.snap-authprobe00', JSON.stringify({ probe: true }));
      await tpl.delete('retired.snap-authprobe00');
    } finally {
      await sc.close();
    }
    // A keyed request goes through the jobs stream, which the scheduler user may use.
    const vm = await sched.client.call('vm.boot', { key: 'auth-boot-through-jobs' });
    assert.equal(vm.host, 'h1');
    await sched.client.call('vm.destroy', { id: vm.id });
    t.diagnostic(
      'hostd h1, the scheduler and the operator connected with their own users; h1 reported in; a keyed boot went through the jobs stream',
    );
  });

  it('refuses connections without credentials or with a wrong password', async () => {
    await assert.rejects(connect({ servers: nats.url, reconnect: false }), /Authorization/i);
    await assert.rejects(connect({ servers: nats.url, user: 'hostd-h1', pass: 'wrong', reconnect: false }), /Authorization/i);
  });

  it("a host using its own credentials cannot subscribe to another host's subjects or read others' replies", async (t) => {
    const nc = await as(auth.hosts.h1 as { user: string; pass: string });
    try {
      const other = nc.subscribe(`${subjects.hostPrefix('h2')}.>`);
      const err = await closedWith(other);
      assert.match(String(err), /Permissions Violation for Subscription/);
      const inbox = nc.subscribe('_INBOX.>');
      assert.match(String(await closedWith(inbox)), /Permissions Violation for Subscription/);
      const schedInbox = nc.subscribe(`${inboxPrefixOf('scheduler')}.>`);
      assert.match(String(await closedWith(schedInbox)), /Permissions Violation for Subscription/);
      // Its own subjects stay allowed (the subscription is still open after a round trip).
      const own = nc.subscribe(`${subjects.hostPrefix('h1')}.probe`);
      await nc.flush();
      assert.equal(own.isClosed(), false);
      own.unsubscribe();
      t.diagnostic(`h1 subscribing to h2's subjects: refused (${String(err).slice(0, 80)})`);
    } finally {
      await nc.close();
    }
  });

  it('a host cannot report for another host, call another host, or write the requests bucket', async (t) => {
    const op = await as(auth.operator);
    const nc = await as(auth.hosts.h1 as { user: string; pass: string });
    try {
      const kvOp = await new Kvm(op).open(BUCKETS.hosts);
      const before = await kvOp.get('h2');
      // A heartbeat on h2's subject never reaches a listener.
      const seen = op.subscribe(subjects.heartbeat('h2'));
      await op.flush();
      const errs = nextPermissionError(nc);
      nc.publish(subjects.heartbeat('h2'), JSON.stringify({ forged: true }));
      assert.match(await errs, /Publish to "forky\.v1\.hb\.h2"/);
      assert.equal(seen.getProcessed(), 0);
      seen.unsubscribe();

      // A guest's spread self-fork goes on the host's own subject only: not the scheduler's fork, not h2's.
      for (const subject of [subjects.sched('fork'), subjects.selfFork('h2')]) {
        const refused = nextPermissionError(nc);
        nc.publish(subject, '{}');
        assert.match(await refused, new RegExp(`Publish to "${subject.replace(/\./g, '\\.')}"`));
      }

      // h2's key in the hosts bucket: the put is refused and the key is unchanged.
      const kv = await new Kvm(nc).open(BUCKETS.hosts);
      await assert.rejects(kv.put('h2', JSON.stringify({ forged: true }), { timeout: 2000 } as never));
      assert.equal((await kvOp.get('h2'))?.revision, before?.revision);
      // Any key but its own host id is refused (hostd writing its own beat is the first test).
      await kv.put('h1-probe-denied-not', 'x').then(
        () => assert.fail('a key other than its own host id must be refused'),
        () => undefined,
      );
      // Calling another host's endpoint, or the scheduler's requests bucket: refused.
      await assert.rejects(new HostdClient(nc, 'h2', { timeoutMs: 2000 }).call('host.info', {}));
      const reqs = await new Kvm(nc).open(BUCKETS.requests);
      await assert.rejects(reqs.put('forged', '{}', { timeout: 2000 } as never));
      // Templates are the scheduler's to write (it made none here; a host may not make one up).
      const tpl = await new Kvm(nc).open(BUCKETS.templates);
      await assert.rejects(tpl.put('forged', '{}', { timeout: 2000 } as never));
      // Dropping the cluster's state is for the operator only.
      await assert.rejects(nc.request(`$JS.API.STREAM.DELETE.KV_${BUCKETS.hosts}`, '', { timeout: 2000 }));
      assert.ok(await kvOp.status(), 'the hosts bucket still exists');
      // The scheduler's job queue: a host may neither queue a job nor take or inspect one.
      await assert.rejects(jetstream(nc).publish(subjects.job('fork'), '{}', { timeout: 2000 }));
      await assert.rejects(
        nc.request(`$JS.API.CONSUMER.MSG.NEXT.${STREAMS.jobs}.${JOBS_CONSUMER}`, '{"batch":1,"expires":1000000000}', { timeout: 2000 }),
      );
      await assert.rejects(nc.request(`$JS.API.STREAM.INFO.${STREAMS.jobs}`, '', { timeout: 2000 }));
      t.diagnostic(
        'h1 forging h2 heartbeats, calling h2, writing requests, deleting a bucket, queueing or taking jobs: all refused; nothing changed',
      );
    } finally {
      await nc.close();
      await op.close();
    }
  });
});

describe('TLS (a self-signed certificate)', { timeout: 120_000 }, () => {
  let dir: string;
  let nats: NatsServer;
  let host: TestHost;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-tls-'));
    const certFile = path.join(dir, 'cert.pem');
    const keyFile = path.join(dir, 'key.pem');
    await promisify(execFile)('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=forky-test',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ]);
    const auth = newClusterAuth(['t1']);
    nats = await startNatsServer({ auth, tls: { certFile, keyFile } });
    const tls = { caFile: certFile };
    const op = { user: auth.operator.user, pass: auth.operator.pass, inboxPrefix: inboxPrefixOf(auth.operator.user), tls };
    host = await startTestHost(nats.url, {
      hostId: 't1',
      overrides: { nats: { servers: [nats.url], ...auth.hosts.t1, tls } },
      clientOptions: op,
    });
  });
  after(async () => {
    await host?.stop();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('hostd and clients connect over TLS; a plain-text client is refused', async (t) => {
    assert.equal((await host.client.call('host.info', {})).id, 't1');
    await assert.rejects(connect({ servers: nats.url, reconnect: false, timeout: 2000 }));
    t.diagnostic('hostd served over TLS; a client without TLS was refused');
  });
});
