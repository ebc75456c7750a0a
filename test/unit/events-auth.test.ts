import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { withDeadline } from '@forky/base';
import { hostPermissions, inboxPrefixOf, newClusterAuth, startNatsServer, type ClusterAuth, type NatsServer } from '@forky/bus';
import { subjects } from '@forky/contract';

/** The first permission error the server reports on `nc`, within 5 s. */
async function permissionError(nc: NatsConnection): Promise<string> {
  return withDeadline(
    (async () => {
      for await (const s of nc.status()) if (s.type === 'error' && /Permissions Violation/i.test(String(s.error))) return String(s.error);
      throw new Error('status stream ended');
    })(),
    5000,
    'permission error',
  );
}

/** hostPermissions for events on a real nats-server with users: each host speaks for itself only. */
describe('events: who may publish and subscribe', { timeout: 30_000 }, () => {
  let nats: NatsServer;
  let auth: ClusterAuth;
  const conns: NatsConnection[] = [];
  const as = async (who: { user: string; pass: string }): Promise<NatsConnection> => {
    const nc = await connect({ servers: nats.url, user: who.user, pass: who.pass, inboxPrefix: inboxPrefixOf(who.user) });
    conns.push(nc);
    return nc;
  };

  before(async () => {
    auth = newClusterAuth(['h1', 'h2']);
    nats = await startNatsServer({ auth });
  });
  after(async () => {
    for (const nc of conns) await nc.close().catch(() => undefined);
    await nats?.stop();
  });

  it('the host config allows its own events subject and no other', () => {
    const allow = hostPermissions('h1').publish.allow;
    assert.ok(allow.includes('forky.v1.events.h1.>'));
    assert.ok(!allow.some((s) => s.startsWith('forky.v1.events.') && s !== 'forky.v1.events.h1.>'));
  });

  it("a host's own events reach the operator; another host's are refused by the server", async () => {
    const op = await as(auth.operator);
    const h1 = await as(auth.hosts.h1 as { user: string; pass: string });
    const got: string[] = [];
    const sub = op.subscribe(subjects.events, { callback: (_e, m) => void got.push(m.subject) });
    await op.flush();
    const refused = permissionError(h1);
    h1.publish(subjects.event('h2', 'destroyed'), '{}');
    assert.match(await refused, /forky\.v1\.events\.h2\.destroyed/);
    h1.publish(subjects.event('h1', 'ready'), '{}');
    await h1.flush();
    // Round trips on both connections: whatever the server routed to the operator has arrived.
    await op.flush();
    assert.deepEqual(got, ['forky.v1.events.h1.ready']);
    sub.unsubscribe();
  });

  it("a host cannot listen to other hosts' events", async () => {
    const h1 = await as(auth.hosts.h1 as { user: string; pass: string });
    const refused = permissionError(h1);
    h1.subscribe(subjects.events);
    assert.match(await refused, /Permissions Violation for Subscription/i);
  });
});
