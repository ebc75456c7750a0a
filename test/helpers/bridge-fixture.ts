import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { NotFoundError, silentLogger } from '@forky/base';
import {
  connectBus,
  newClusterAuth,
  startNatsServer,
  startService,
  type ClientStream,
  type ClusterAuth,
  type NatsServer,
  type StreamChunk,
} from '@forky/bus';
import { GUEST_ENDPOINTS, hostdContract, subjects, type GuestEndpoint } from '@forky/contract';
import { GuestStreams } from '@forky/hostd/internal';
import { FakeSession } from './fake-guest.js';

export const BRIDGE_HOST = 'h1';
export const BRIDGE_VM = 'vm-abcdefghijkm';

/** Everything a stream yields until its end (or its error). */
export async function drain(s: ClientStream): Promise<StreamChunk[]> {
  const out: StreamChunk[] = [];
  for await (const c of s) out.push(c);
  return out;
}

/** A micro-service endpoint for one guest endpoint of `host`, checked against the contract as hostd's are. */
export const guestEndpoint = (host: string, e: GuestEndpoint, handler: (r: unknown) => Promise<unknown>) => ({
  name: e.replace('.', '_'),
  subject: subjects.host(host, e),
  request: hostdContract[e].request,
  reply: hostdContract[e].reply,
  handler,
});

export interface BridgeFixture {
  nats: NatsServer;
  auth: ClusterAuth;
  /** hostd's connection, as host BRIDGE_HOST. */
  hostNc: NatsConnection;
  /** The operator's. */
  client: NatsConnection;
  /** The guest of BRIDGE_VM, the only VM there is. */
  session: FakeSession;
  streams: GuestStreams;
  stop(): Promise<void>;
}

/**
 * A real nats-server with users for `hosts` (BRIDGE_HOST first), hostd's stream bridge serving
 * BRIDGE_HOST's guest endpoints over a fake guest, and an operator's client.
 */
export async function startBridge(
  hosts: string[],
  opts: Omit<ConstructorParameters<typeof GuestStreams>[0], 'nc' | 'hostId' | 'guest'>,
): Promise<BridgeFixture> {
  const auth = newClusterAuth(hosts);
  const nats = await startNatsServer({ auth });
  const hostNc = await connectBus({
    servers: nats.url,
    name: 'test-hostd',
    ...(auth.hosts[BRIDGE_HOST] as { user: string; pass: string }),
  });
  const client = await connectBus({ servers: nats.url, name: 'test-client', ...auth.operator });
  const session = new FakeSession();
  const streams = new GuestStreams({
    nc: hostNc,
    hostId: BRIDGE_HOST,
    guest: async (id) => {
      if (id !== BRIDGE_VM) throw new NotFoundError('VM', id);
      return session;
    },
    ...opts,
  });
  streams.start();
  const handlers = streams.handlers() as Record<string, (r: unknown) => Promise<unknown>>;
  const service: Service = await startService(
    hostNc,
    { name: 'forky-hostd', version: '0.0.0', description: 'test', queue: '' },
    GUEST_ENDPOINTS.map((e) => guestEndpoint(BRIDGE_HOST, e, (r) => (handlers[e] as (r: unknown) => Promise<unknown>)(r))),
    silentLogger(),
  );
  return {
    nats,
    auth,
    hostNc,
    client,
    session,
    streams,
    async stop() {
      await streams.stop();
      await service.stop();
      await client.close();
      await hostNc.close();
      await nats.stop();
    },
  };
}
