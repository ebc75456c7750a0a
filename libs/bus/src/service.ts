import type { MsgHdrs, NatsConnection } from '@nats-io/nats-core';
import { Svcm, type Service, type ServiceMsg } from '@nats-io/services';
import type { z } from 'zod';
import { ForkyError, asForkyError, withDeadline, type Logger } from '@forky/base';
import {
  CONTENT_TYPE,
  decodeBody,
  encodeBody,
  fieldPath,
  headerText,
  parseOrThrow,
  toWireError,
  type Format,
  type WireError,
} from '@forky/contract';
import { headerOf, safeHeaders } from './headers.js';
import { inCallerTime } from './deadlines.js';

export interface EndpointDef {
  /** Endpoint name as `$SRV.INFO` shows it. */
  name: string;
  subject: string;
  request: z.ZodType;
  reply: z.ZodType;
  /** `subject`: the one the request came on (an endpoint on a wildcard subject learns which). */
  handler: (req: unknown, subject: string) => Promise<unknown>;
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
        // handle() answers every request itself; what escapes it is logged, never an exit.
        handle(ep, msg, logger, stats.get(ep.subject) as EndpointStats).catch((e: unknown) =>
          logQuietly(logger, ep.name, e, 'request handling failed'),
        );
      },
      metadata: { subject: ep.subject },
    });
  }
  // Served once this returns: the server has every subscription. Without the round trip, a client
  // on another connection told "up" (a test, a heartbeat read) could ask first and get no responders.
  await withDeadline(nc.flush(), 10_000, `service ${def.name} subscribing`);
  return svc;
}

interface EndpointStats {
  requests: number;
  errors: number;
  totalMs: number;
  lastError: string;
}

async function handle(ep: EndpointDef, msg: ServiceMsg, logger: Logger, stats: EndpointStats): Promise<void> {
  // Past the caller's deadline (Forky-Deadline, Forky-Start-By) the handler is not called: TIMEOUT.
  const def = ep;
  ep = inCallerTime({ ...def, handler: (req: unknown) => def.handler(req, msg.subject) }, msg);
  const started = performance.now();
  stats.requests++;
  let format: Format = 'json';
  try {
    const decoded = decodeBody(msg.data, headerOf(msg, 'Content-Type'));
    format = decoded.format;
    const req = parseOrThrow(ep.request, decoded.value, `${ep.name} request`);
    const reply = await ep.handler(req, msg.subject);
    msg.respond(encodeReply(ep, reply, format), { headers: contentType(format) });
    logger.debug({ endpoint: ep.name, ms: Math.round(performance.now() - started) }, 'request served');
  } catch (e) {
    const fe = toForkyError(e);
    stats.errors++;
    stats.lastError = headerText(`${fe.code}: ${fe.message}`);
    respondFailure(msg, fe, format, logger, ep.name);
    const level = fe.code === 'INTERNAL' || fe.code === 'QEMU' ? 'error' : 'info';
    logger[level]({ endpoint: ep.name, code: fe.code, err: fe }, 'request failed');
  } finally {
    stats.totalMs += performance.now() - started;
  }
}

function contentType(format: Format): MsgHdrs {
  return safeHeaders({ 'Content-Type': CONTENT_TYPE[format] });
}

/** A reply that breaks the contract is our fault: INTERNAL, naming the field, not a ZodError's many lines. */
function encodeReply(ep: EndpointDef, reply: unknown, format: Format): Uint8Array {
  const r = ep.reply.safeParse(reply);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new ForkyError(
      'INTERNAL',
      `${ep.name} reply does not match the contract: ${i ? `${fieldPath(i.path)}: ${headerText(i.message, 200)}` : 'invalid'}`,
    );
  }
  return encodeBody(r.data, format);
}

/**
 * Sends the typed error reply; if that cannot be sent (the body does not encode, the reply
 * subject is refused), a bare INTERNAL one; if not even that, the failure is logged.
 */
function respondFailure(msg: ServiceMsg, fe: ForkyError, format: Format, logger: Logger, endpoint: string): void {
  try {
    const status = Number.isInteger(fe.status) ? fe.status : 500;
    msg.respondError(status, headerText(`${fe.code}: ${fe.message}`), encodeBody(toWireError(fe), format), {
      headers: contentType(format),
    });
    return;
  } catch (e) {
    logQuietly(logger, endpoint, e, 'the error reply could not be sent; sending a bare INTERNAL one');
  }
  try {
    const bare: WireError = { error: { code: 'INTERNAL', message: 'the reply could not be sent' } };
    msg.respondError(500, 'INTERNAL: the reply could not be sent', encodeBody(bare, 'json'), { headers: contentType('json') });
  } catch (e) {
    logQuietly(logger, endpoint, e, 'no reply could be sent');
  }
}

/** Anything thrown, as a ForkyError, even a value whose toString throws. */
function toForkyError(e: unknown): ForkyError {
  try {
    return asForkyError(e);
  } catch {
    return new ForkyError('INTERNAL', 'a handler threw a value that cannot be shown');
  }
}

/** Logs, and if logging itself throws, gives up silently: this is the last line of defence. */
function logQuietly(logger: Logger, endpoint: string, err: unknown, what: string): void {
  try {
    logger.error({ endpoint, err }, what);
  } catch {
    // Nothing is left to tell it to.
  }
}
