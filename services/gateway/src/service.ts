import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import type { Logger } from '@forky/base';
import { SchedulerClient, startService } from '@forky/bus';
import { SERVICE_NAMES, gatewayContract, gatewaySubject, type GatewayUrlRequest, type GatewayUrlReply } from '@forky/contract';
import { previewUrl } from './route.js';
import { previewToken } from './token.js';

export interface UrlServiceOptions {
  nc: NatsConnection;
  secret: Buffer;
  domain: string;
  /** The port URLs name. */
  port: number;
  version: string;
  timeoutMs: number;
  logger: Logger;
}

/**
 * `gateway.url` as a NATS micro service (JSON or msgpack, like every service): the URL and token of a
 * VM's port. The VM must exist (the scheduler's `vm.show`; its NOT_FOUND goes back as is), so a token
 * is never minted for a mistyped id. Who may call it is NATS's to say: anyone allowed `forky.v1.gateway.>`.
 */
export function startUrlService(o: UrlServiceOptions): Promise<Service> {
  const sched = new SchedulerClient(o.nc, { timeoutMs: o.timeoutMs });
  const handler = async (req: unknown): Promise<GatewayUrlReply> => {
    const r = req as GatewayUrlRequest;
    await sched.call('vm.show', { id: r.id });
    return { url: previewUrl({ vm: r.id, port: r.port }, o.domain, o.port), token: previewToken(o.secret, r.id) };
  };
  return startService(
    o.nc,
    {
      name: SERVICE_NAMES.gateway,
      version: o.version,
      description: 'Forky Pig preview gateway: HTTP and WebSocket to guest ports',
      // Every gateway of a cluster shares the secret and the domain: any of them may answer.
      queue: SERVICE_NAMES.gateway,
    },
    [{ name: 'gateway_url', subject: gatewaySubject('gateway.url'), ...gatewayContract['gateway.url'], handler }],
    o.logger.child({ component: 'service' }),
  );
}
