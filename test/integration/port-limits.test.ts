import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, pollUntil } from '@forky/base';
import { connectBus, openStream, type ClientStream } from '@forky/bus';
import { subjects, type GuestEndpoint } from '@forky/contract';
import { DEFAULT_STREAM_LIMITS, type GuestStreams } from '@forky/hostd/internal';
import { BRIDGE_HOST, BRIDGE_VM, startBridge, type BridgeFixture } from '../helpers/bridge-fixture.js';
import type { FakeSession } from '../helpers/fake-guest.js';

/** Another host of the cluster: its user may serve only its own subjects. */
const ROGUE = 'rogue-port-host';

/**
 * hostd's limits for port connections (issue 18): a VM carries its 256 port connections apart
 * from its 64 other streams, and the one past either limit is CAPACITY naming it. A fake guest
 * (its `tcp` streams stay open until cancelled), a real nats-server and the real bridge.
 */
describe('port.open limits: 256 connections per VM beside its 64 streams (real nats-server, fake guest)', { timeout: 120_000 }, () => {
  let client: NatsConnection;
  let session: FakeSession;
  let streams: GuestStreams;
  let fixture: BridgeFixture | undefined;
  const open = (endpoint: GuestEndpoint, body: Record<string, unknown>): Promise<ClientStream> =>
    openStream(client, subjects.host(BRIDGE_HOST, endpoint), body);
  const refusal = (p: Promise<unknown>): Promise<ForkyError> =>
    p.then(
      () => assert.fail('the open past the limit was served'),
      (e: unknown) => e as ForkyError,
    );

  before(async () => {
    fixture = await startBridge([BRIDGE_HOST, ROGUE], {});
    ({ client, session, streams } = fixture);
  });
  after(() => fixture?.stop());

  it('the defaults: at least 128 port connections per VM, besides the other streams, under the agent’s 512', () => {
    assert.ok(DEFAULT_STREAM_LIMITS.portsPerVm >= 128);
    assert.ok(DEFAULT_STREAM_LIMITS.perVm + DEFAULT_STREAM_LIMITS.portsPerVm + 16 <= 512, 'what one agent session holds');
  });

  it('opens 256 port connections and 64 execs at once; the next of each is CAPACITY naming its limit', async () => {
    const { portsPerVm, perVm } = DEFAULT_STREAM_LIMITS;
    const ports = await Promise.all(Array.from({ length: portsPerVm }, (_, i) => open('port.open', { id: BRIDGE_VM, port: 1000 + i })));
    const execs = await Promise.all(Array.from({ length: perVm }, () => open('exec.start', { id: BRIDGE_VM, cmd: ['hold'] })));
    assert.equal(session.streams.filter((s) => s.req.op === 'tcp').length, portsPerVm);
    assert.deepEqual(session.streams.find((s) => s.req.op === 'tcp')?.req, { op: 'tcp', port: 1000 });

    const port = await refusal(open('port.open', { id: BRIDGE_VM, port: 80 }));
    assert.equal(port.code, 'CAPACITY');
    assert.match(port.message, /256 port connections open, the most it may \(256 per VM\)/);
    const exec = await refusal(open('exec.start', { id: BRIDGE_VM, cmd: ['hold'] }));
    assert.equal(exec.code, 'CAPACITY');
    assert.match(exec.message, /64 streams open, the most it may \(64 per VM\)/);

    // A connection that ends gives its slot back.
    const first = ports[0] as ClientStream;
    first.cancel();
    for await (const c of first) if (c.kind === 'end') break;
    await pollUntil(async () => (streams.registry.size === portsPerVm + perVm - 1 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'the ended stream leaving the registry',
    });
    const again = await open('port.open', { id: BRIDGE_VM, port: 80 });
    for (const s of [again, ...ports.slice(1), ...execs]) s.cancel();
    await pollUntil(async () => (streams.registry.size === 0 ? true : undefined), { timeoutMs: 20_000, what: 'every stream ending' });
  });

  it('refuses a port outside 1..65535 before anything reaches the guest', async () => {
    const before = session.streams.length;
    for (const port of [0, 65536, -1, 1.5, '80'])
      assert.equal((await refusal(open('port.open', { id: BRIDGE_VM, port }))).code, 'BAD_REQUEST', `port ${String(port)}`);
    assert.equal(session.streams.length, before);
  });

  it('another host cannot open a port on this host, nor touch a port stream’s subjects', async () => {
    const f = fixture as BridgeFixture;
    const rogue = await connectBus({ servers: f.nats.url, name: 'rogue-host', ...(f.auth.hosts[ROGUE] as { user: string; pass: string }) });
    try {
      const st = await open('port.open', { id: BRIDGE_VM, port: 80 });
      const guest = session.streams.at(-1);
      await assert.rejects(
        rogue.request(subjects.host(BRIDGE_HOST, 'port.open'), JSON.stringify({ id: BRIDGE_VM, port: 80 }), { timeout: 3000 }),
      );
      // Denied publishes are dropped by the server (and reported to the rogue): the stream lives on.
      rogue.publish(st.ref.cancel);
      rogue.publish(st.ref.in, new Uint8Array(10));
      await rogue.flush().catch(() => undefined);
      // Answered by hostd after the rogue's messages were routed (or dropped): had they come, they were handled first.
      await refusal(open('port.open', { id: BRIDGE_VM, port: 0 }));
      assert.deepEqual([guest?.req.op, guest?.cancelled, guest?.input.length], ['tcp', false, 0], 'the stream was not touched');
      st.cancel();
      for await (const c of st) if (c.kind === 'end') break;
    } finally {
      await rogue.close().catch(() => undefined);
    }
  });
});
