import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import type { Logger } from '@forky/base';
import { startService, type EndpointDef } from '@forky/bus';
import {
  HOSTD_ENDPOINTS,
  SERVICE_NAMES,
  hostdContract,
  snapshotMatches,
  subjects,
  vmMatches,
  type HostdEndpoint,
  type ParsedRequestOf,
  type ReplyOf,
} from '@forky/contract';
import type { HostEngine } from './domain/engine.js';
import type { GuestHandlers } from './streams/endpoints.js';

type Handlers = { [E in HostdEndpoint]: (req: ParsedRequestOf<E>) => Promise<ReplyOf<E>> | ReplyOf<E> };

/** Maps every hostd endpoint of the contract onto the engine. */
export function hostdHandlers(engine: HostEngine, guest: GuestHandlers, instance: string): Handlers {
  return {
    ...guest,
    'host.info': () => engine.hostInfo(),
    'host.ping': () => ({ instance }),
    'vm.boot': (r) => engine.boot(r),
    'vm.list': (r) => ({ vms: engine.list().filter((v) => vmMatches(v, r)) }),
    'vm.show': (r) => engine.showWithCounters(r.id),
    'vm.pause': (r) => engine.pause(r.id),
    'vm.resume': (r) => engine.resume(r.id),
    'vm.destroy': (r) => engine.destroy(r.id),
    'vm.exec': (r) => engine.exec(r),
    'vm.app': (r) => engine.apps(r),
    'vm.network': (r) => engine.network(r),
    'vm.extend': (r) => engine.extend(r),
    'snapshot.create': (r) => engine.snapshot(r),
    'snapshot.list': (r) => ({ snapshots: engine.listSnapshots().filter((s) => snapshotMatches(s, r)) }),
    'snapshot.show': (r) => engine.showSnapshot(r.id),
    'snapshot.delete': (r) => engine.deleteSnapshot(r.id, r.cascade),
    'snapshot.publish': (r) => engine.publish(r.id),
    'snapshot.fetch': (r) => engine.fetch(r.id),
    fork: (r) => engine.fork(r),
    'fork.abandon': (r) => engine.abandonFork(r.key),
  };
}

/**
 * hostd as a NATS micro service. Its endpoints live under this host's own subject prefix, with no
 * queue group: a host answers only for itself.
 */
export async function startHostdService(
  nc: NatsConnection,
  hostId: string,
  engine: HostEngine,
  version: string,
  logger: Logger,
  /** The sandbox endpoints (streams/endpoints.ts). */
  guest: GuestHandlers,
  /** This hostd process's name, as its heartbeats give it (host.ping answers with it). */
  instance: string,
): Promise<Service> {
  const handlers = hostdHandlers(engine, guest, instance);
  const endpoints: EndpointDef[] = HOSTD_ENDPOINTS.map((e) => ({
    name: e.replace('.', '_'),
    subject: subjects.host(hostId, e),
    request: hostdContract[e].request,
    reply: hostdContract[e].reply,
    handler: async (req: unknown) => (handlers[e] as (r: unknown) => unknown)(req),
  }));
  return startService(
    nc,
    { name: SERVICE_NAMES.hostd, version, description: `Forky Pig host agent on ${hostId}`, metadata: { host: hostId }, queue: '' },
    endpoints,
    logger.child({ component: 'service' }),
  );
}
