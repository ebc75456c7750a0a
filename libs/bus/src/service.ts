import type { NatsConnection } from '@nats-io/nats-core';
import { headers } from '@nats-io/nats-core';
import { Svcm, type Service, type ServiceMsg } from '@nats-io/services';
import type { z } from 'zod';
import { asForkyError, type Logger } from '@forky/base';
import { CONTENT_TYPE, decodeBody, encodeBody, parseOrThrow, toWireError, type Format } from '@forky/contract';

export interface EndpointDef {
  /** Endpoint name as `$SRV.INFO` shows it. */
  name: string;
  subject: string;
  request: z.ZodType;
  reply: z.ZodType;
  handler: (req: unknown) => Promise<unknown>;
}

export interface ServiceDef {
  name: string;
  version: string;
  description: string;
  metadata?: Record<string, string>;
  /** Queue group; '' for none (every instance answers). */
  queue?: string;
}

/**
 * Starts a NATS micro service: discoverable with `$SRV.PING|INFO|STATS`, every endpoint takes
 * msgpack or JSON and answers in kind, requests are validated against the contract, and a failure
 * is a micro error (Nats-Service-Error-Code / Nats-Service-Error headers) whose body carries
 * `{error: {code, message}}` — never a stack.
 */
export async function startService(
  nc: NatsConnection,
  def: ServiceDef,
  endpoints: readonly EndpointDef[],
  logger: Logger,
): Promise<Service> {
  // The micro library times and counts errors only for synchronous handlers; ours are async,
  // so each endpoint keeps its own figures and reports them in the stats `data` field.
  const stats = new Map<string, EndpointStats>(endpoints.map((e) => [e.subject, { requests: 0, errors: 0, totalMs: 0, lastError: '' }]));
  const svc = await new Svcm(nc).add({
    name: def.name,
    statsHandler: (ep) => Promise.resolve(stats.get(ep.subject) ?? null),
    version: def.version,
    description: def.description,
    ...(def.metadata ? { metadata: def.metadata } : {}),
    ...(def.queue !== undefined ? { queue: def.queue } : {}),
  });
  for (const ep of endpoints) {
    svc.addEndpoint(ep.name, {
      subject: ep.subject,
      handler: (err, msg) => {
        if (err) {
          logger.error({ err, endpoint: ep.name }, 'endpoint subscription failed');
          return;
        }
        void handle(ep, msg, logger, stats.get(ep.subject) as EndpointStats);
      },
      metadata: { subject: ep.subject },
    });
  }
  return svc;
}

interface EndpointStats {
  requests: number;
  errors: number;
  totalMs: number;
  lastError: string;
}

async function handle(ep: EndpointDef, msg: ServiceMsg, logger: Logger, stats: EndpointStats): Promise<void> {
  const started = performance.now();
  stats.requests++;
  let format: Format = 'json';
  try {
    const decoded = decodeBody(msg.data, msg.headers?.get('Content-Type') || undefined);
    format = decoded.format;
    const req = parseOrThrow(ep.request, decoded.value, `${ep.name} request`);
    const reply = await ep.handler(req);
    msg.respond(encodeBody(ep.reply.parse(reply), format), { headers: contentType(format) });
    logger.debug({ endpoint: ep.name, ms: Math.round(performance.now() - started) }, 'request served');
  } catch (e) {
    const fe = asForkyError(e);
    stats.errors++;
    stats.lastError = `${fe.code}: ${fe.message}`;
    const level = fe.code === 'INTERNAL' || fe.code === 'QEMU' ? 'error' : 'info';
    logger[level]({ endpoint: ep.name, code: fe.code, err: fe }, 'request failed');
    msg.respondError(fe.status, `${fe.code}: ${fe.message}`, encodeBody(toWireError(fe), format), {
      headers: contentType(format),
    });
  } finally {
    stats.totalMs += performance.now() - started;
  }
}

function contentType(format: Format): ReturnType<typeof headers> {
  const h = headers();
  h.set('Content-Type', CONTENT_TYPE[format]);
  return h;
}
