import { connect, type NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import type { Logger } from '@forky/base';
import { inboxPrefixOf, readCredentials } from './auth.js';

export interface BusTls {
  /** The CA that signed the server's certificate (or the server's self-signed certificate). */
  caFile?: string;
  /** A client certificate, where the server asks for one. */
  certFile?: string;
  keyFile?: string;
}

export interface BusAuth {
  user?: string;
  pass?: string;
  token?: string;
  /** A 0600 JSON file `{user, pass}` (what `forky up` writes): keeps the password out of argv and env. */
  authFile?: string;
  tls?: BusTls;
}

export interface BusOptions extends BusAuth {
  servers: string | string[];
  /** Shown by the server in connz; identifies the component. */
  name: string;
  logger?: Logger;
  /** Fail the first connect after this long (later reconnects go on forever). */
  timeoutMs?: number;
}

/**
 * Connects with reconnects on, and logs connection status changes. A user gets its own inbox
 * prefix, the only inboxes its permissions let it subscribe to (see auth.ts).
 */
export async function connectBus(opts: BusOptions): Promise<NatsConnection> {
  const creds = opts.authFile ? await readCredentials(opts.authFile) : opts.user ? { user: opts.user, pass: opts.pass ?? '' } : undefined;
  const nc = await connect({
    servers: opts.servers,
    name: opts.name,
    timeout: opts.timeoutMs ?? 5000,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    ...(creds ? { user: creds.user, pass: creds.pass, inboxPrefix: inboxPrefixOf(creds.user) } : {}),
    ...(opts.token ? { token: opts.token } : {}),
    ...(opts.tls ? { tls: { ...opts.tls } } : {}),
  });
  if (opts.logger) {
    const log = opts.logger;
    void (async () => {
      for await (const s of nc.status()) log.info({ status: s.type }, 'nats connection status');
    })();
  }
  return nc;
}

/** How hostd and the scheduler are told to connect: one schema for both configs. */
export const NatsConfig = z.strictObject({
  servers: z.array(z.string().min(1)).min(1),
  user: z.string().optional(),
  pass: z.string().optional(),
  token: z.string().optional(),
  authFile: z.string().optional(),
  tls: z.strictObject({ caFile: z.string().optional(), certFile: z.string().optional(), keyFile: z.string().optional() }).optional(),
});
export type NatsConfig = z.infer<typeof NatsConfig>;

const env = (k: string): string | undefined => process.env[k] || undefined;

/** The NATS settings from FORKY_NATS_* (a layer for parseConfig). */
export function natsConfigFromEnv(): Record<string, unknown> {
  const ca = env('FORKY_NATS_CA');
  return {
    servers: env('FORKY_NATS_URL')?.split(','),
    user: env('FORKY_NATS_USER'),
    pass: env('FORKY_NATS_PASS'),
    token: env('FORKY_NATS_TOKEN'),
    authFile: env('FORKY_NATS_AUTH_FILE'),
    tls: ca ? { caFile: ca } : undefined,
  };
}
