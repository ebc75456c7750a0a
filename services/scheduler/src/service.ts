import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import type { Logger } from '@forky/base';
import { startService, type EndpointDef } from '@forky/bus';
import {
  GUEST_ENDPOINTS,
  SCHED_ENDPOINTS,
  SERVICE_NAMES,
  schedContract,
  subjects,
  type GuestEndpoint,
  type SchedEndpoint,
  type SchedParsedRequestOf,
} from '@forky/contract';
import type { Scheduler } from './scheduler.js';
import { refuseSelfForkEnv, selfForkEndpoint } from './self-fork.js';

type Handlers = { [E in SchedEndpoint]: (req: SchedParsedRequestOf<E>) => Promise<unknown> };

export function schedulerHandlers(s: Scheduler): Handlers {
  // The sandbox endpoints go whole to the VM's host.
  const guest = Object.fromEntries(GUEST_ENDPOINTS.map((e) => [e, (r: { id: string }) => s.forwardGuest(e, r)])) as unknown as Pick<
    Handlers,
    GuestEndpoint
  >;
  return {
    ...guest,
    hosts: async () => ({ hosts: await s.hosts() }),
    'vm.boot': (r) => s.boot(r),
    'vm.list': async (r) => ({ vms: await s.gather('vm.list', r) }),
    'vm.show': (r) => s.forward('vm.show', r),
    'vm.pause': (r) => s.forward('vm.pause', r),
    'vm.resume': (r) => s.forward('vm.resume', r),
    'vm.destroy': (r) => s.forward('vm.destroy', r),
    'vm.exec': (r) => s.forward('vm.exec', r),
    'vm.app': (r) => s.forward('vm.app', r),
    'vm.network': (r) => s.forward('vm.network', r),
    'vm.extend': (r) => s.forward('vm.extend', r),
    'snapshot.create': (r) => s.snapshot(r),
    'snapshot.list': async (r) => ({ snapshots: await s.gather('snapshot.list', r) }),
    'snapshot.show': (r) => s.forward('snapshot.show', r),
    'snapshot.delete': (r) => s.deleteSnapshot(r.id, r.cascade),
    'snapshot.tree': () => s.tree(),
    fork: async (r) => {
      refuseSelfForkEnv(r);
      return s.fork(r);
    },
    batch: (r) => s.batch(r),
    'template.create': (r) => s.createTemplate(r),
    'template.list': () => s.templates(),
    'template.show': (r) => s.template(r.name),
    'template.delete': (r) => s.deleteTemplate(r.name),
  };
}

/** The scheduler as a NATS micro service; every instance joins one queue group. */
export function startSchedulerService(nc: NatsConnection, s: Scheduler, version: string, logger: Logger): Promise<Service> {
  const handlers = schedulerHandlers(s);
  const endpoints: EndpointDef[] = SCHED_ENDPOINTS.map((e) => ({
    name: e.replace('.', '_'),
    subject: subjects.sched(e),
    request: schedContract[e].request,
    reply: schedContract[e].reply,
    handler: (req: unknown) => (handlers[e] as (r: unknown) => Promise<unknown>)(req),
  }));
  // Hosts' spread self-forks, each on its own host's subject (self-fork.ts).
  endpoints.push(selfForkEndpoint(s));
  return startService(
    nc,
    {
      name: SERVICE_NAMES.scheduler,
      version,
      description: 'Forky Pig scheduler: places and forwards VM work',
      queue: SERVICE_NAMES.scheduler,
    },
    endpoints,
    logger.child({ component: 'service' }),
  );
}
