import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '@forky/base';

export interface BusAuth {
  user?: string;
  pass?: string;
  token?: string;
}

export interface BusOptions extends BusAuth {
  servers: string | string[];
  /** Shown by the server in connz; identifies the component. */
  name: string;
  logger?: Logger;
  /** Fail the first connect after this long (later reconnects go on forever). */
  timeoutMs?: number;
}

/** Connects with reconnects on, and logs connection status changes. */
export async function connectBus(opts: BusOptions): Promise<NatsConnection> {
  const nc = await connect({
    servers: opts.servers,
    name: opts.name,
    timeout: opts.timeoutMs ?? 5000,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    ...(opts.user ? { user: opts.user, pass: opts.pass } : {}),
    ...(opts.token ? { token: opts.token } : {}),
  });
  if (opts.logger) {
    const log = opts.logger;
    void (async () => {
      for await (const s of nc.status()) log.info({ status: s.type }, 'nats connection status');
    })();
  }
  return nc;
}
