import type net from 'node:net';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import type { Logger } from '@forky/base';
import { connectBus } from '@forky/bus';
import { secretFileOf, type GatewayConfig } from './config.js';
import { PreviewServer, listenError } from './server.js';
import { startUrlService } from './service.js';
import { loadSecret } from './token.js';

export const GATEWAY_VERSION = '0.1.0';

export interface RunningGateway {
  nc: NatsConnection;
  server: PreviewServer;
  service: Service;
  /** Where it listens (port 0 in the config: the one it got). */
  address: net.AddressInfo;
  stop(): Promise<void>;
}

/** Reads (or makes) the secret, connects, listens, then serves `gateway.url`; undoes what it did if a step fails. */
export async function startGateway(config: Readonly<GatewayConfig>, logger: Logger): Promise<RunningGateway> {
  const secret = await loadSecret(secretFileOf(config));
  const nc = await connectBus({ ...config.nats, name: 'forky-gateway', logger, timeoutMs: config.openTimeoutMs });
  const server = new PreviewServer({ nc, config, secret, logger });
  let address: net.AddressInfo;
  try {
    address = await server.listen().catch((e: unknown) => {
      throw listenError(config.listen, e);
    });
  } catch (e) {
    await nc.close().catch(() => undefined);
    throw e;
  }
  let service: Service;
  try {
    service = await startUrlService({
      nc,
      secret,
      domain: config.domain,
      port: config.publicPort ?? address.port,
      version: GATEWAY_VERSION,
      timeoutMs: config.openTimeoutMs,
      logger,
    });
  } catch (e) {
    await server.close().catch(() => undefined);
    await nc.close().catch(() => undefined);
    throw e;
  }
  logger.info({ listen: `${address.address}:${address.port}`, domain: config.domain, servers: config.nats.servers }, 'gateway serving');
  return {
    nc,
    server,
    service,
    address,
    async stop() {
      await service.stop().catch(() => undefined);
      await server.close();
      await nc.drain().catch(() => undefined);
    },
  };
}
