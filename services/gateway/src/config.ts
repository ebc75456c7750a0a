import path from 'node:path';
import { z } from 'zod';
import { NatsConfig, natsConfigFromEnv } from '@forky/bus';
import { parseConfig, readConfigFile } from '@forky/base';

/** `HOST:PORT` or `[IPv6]:PORT`; port 0 is any free port (tests). */
export const ListenAddress = z
  .string()
  .regex(/^(?:\[[0-9A-Fa-f:.]+\]|[^:[\]\s]+):\d{1,5}$/, 'must be HOST:PORT or [IPv6]:PORT')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'the port must be 0 to 65535');

export const GatewayConfig = z.strictObject({
  nats: NatsConfig,
  /** Where browsers connect. Loopback unless asked: what it serves is every VM's ports, to token holders. */
  listen: ListenAddress.default('127.0.0.1:8480'),
  /** Previews are `<vmId>-<port>.<domain>`; browsers resolve `*.localhost` to loopback with no DNS. */
  domain: z
    .string()
    .regex(/^(?=.{1,200}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/, 'a lowercase DNS name')
    .default('localhost'),
  /** The port URLs name, when a proxy in front listens elsewhere (80: none shown); default the listening port. */
  publicPort: z.number().int().min(1).max(65535).optional(),
  dataDir: z.string().min(1).default('.forky/gateway'),
  /** 32 random bytes, 0600, made if missing: it mints every token, so whoever reads it can open every preview. */
  secretFile: z.string().min(1).optional(),
  /** Bounds: connections at once, the request head, how long its head may take, and a silent connection's life. */
  maxConnections: z.number().int().min(1).max(65_536).default(1024),
  headMaxBytes: z
    .number()
    .int()
    .min(1024)
    .max(65_536)
    .default(16 * 1024),
  headTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
  idleMs: z.number().int().min(1_000).max(86_400_000).default(300_000),
  /** The deadline of one `port.open` (and `vm.show`) request. */
  openTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});
export type GatewayConfig = z.infer<typeof GatewayConfig>;

const env = (k: string): string | undefined => process.env[k] || undefined;

/** The secret file: as configured, else in the data directory. */
export const secretFileOf = (c: Readonly<GatewayConfig>): string => c.secretFile ?? path.join(c.dataDir, 'preview-secret');

/** defaults < file (--config / FORKY_GATEWAY_CONFIG) < env < flags */
export function loadGatewayConfig(flags: Record<string, unknown> = {}): Readonly<GatewayConfig> {
  const { config, ...flagLayer } = flags;
  const file = readConfigFile((config as string | undefined) ?? env('FORKY_GATEWAY_CONFIG'));
  const fromEnv = {
    nats: natsConfigFromEnv(),
    listen: env('FORKY_GATEWAY_LISTEN'),
    domain: env('FORKY_GATEWAY_DOMAIN'),
    dataDir: env('FORKY_DATA_DIR'),
    logLevel: env('FORKY_LOG_LEVEL'),
  };
  return parseConfig(GatewayConfig, { nats: { servers: ['nats://127.0.0.1:4222'] } }, file, fromEnv, flagLayer);
}
