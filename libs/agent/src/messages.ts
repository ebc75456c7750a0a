import { z } from 'zod';
import { TCP_ERROR_CODES, type AgentEnd, type AgentMsg, type GuestRequest } from './types.js';

/**
 * Schemas for every JSON payload the agent sends (PROTOCOL.md). All strict: a payload with a
 * field the document does not name, or of the wrong shape, is a protocol violation of its stream.
 * Sizes are bounded by the frame (64 KiB), so counts need no separate cap beyond sanity.
 */
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const pid = z
  .number()
  .int()
  .min(1)
  .max(2 ** 31);

export const StatSchema = z
  .object({
    type: z.enum(['file', 'dir', 'symlink', 'other']),
    size: count,
    mode: z.number().int().min(0).max(0o7777),
    mtimeMs: z.number().finite(),
  })
  .strict();

export const ProcSchema = z
  .object({
    pid,
    cmd: z.array(z.string()).max(4096),
    detached: z.boolean(),
    pty: z.boolean(),
    running: z.boolean(),
    exitCode: z.number().int().min(0).max(255).nullable(),
    startedAtMs: z.number().finite(),
  })
  .strict();

export const HelloAckSchema = z
  .object({
    v: z.literal(1),
    session: z.string().regex(/^[0-9a-f]{32}$/),
    agent: z.string().max(256),
    pid,
  })
  .strict();
export type HelloAck = z.infer<typeof HelloAckSchema>;

export const AgentMsgSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('started'), pid }).strict(),
  z.object({ type: z.literal('stat'), stat: StatSchema }).strict(),
  z
    .object({
      type: z.literal('entries'),
      entries: z.array(z.object({ name: z.string().min(1), stat: StatSchema }).strict()),
    })
    .strict(),
  z
    .object({
      type: z.literal('events'),
      events: z.array(z.object({ path: z.string(), kind: z.enum(['create', 'modify', 'delete', 'move']) }).strict()),
    })
    .strict(),
  z.object({ type: z.literal('dropped'), bytes: count }).strict(),
]);

const GuestErrorCodeSchema = z.enum([
  'NOT_FOUND',
  'EXISTS',
  'PERMISSION',
  'NOT_DIR',
  'IS_DIR',
  'NOT_EMPTY',
  'INVALID',
  'BUSY',
  'IO',
  'CANCELLED',
  ...TCP_ERROR_CODES,
]);

export const AgentEndSchema = z.discriminatedUnion('ok', [
  z
    .object({
      ok: z.literal(true),
      exitCode: z.number().int().min(0).max(255).optional(),
      signal: z
        .string()
        .regex(/^[A-Z0-9+]{1,16}$/)
        .nullable()
        .optional(),
      timedOut: z.boolean().optional(),
      cancelled: z.boolean().optional(),
      pid: pid.optional(),
      bytes: count.optional(),
      processes: z.array(ProcSchema).optional(),
      stat: StatSchema.optional(),
    })
    .strict(),
  z.object({ ok: z.literal(false), code: GuestErrorCodeSchema, message: z.string().max(8192) }).strict(),
]);

/** The one OPEN the host checks itself before it sends it: a `tcp` port (the rest come checked from the contract). */
export const TcpOpenSchema = z.object({ op: z.literal('tcp'), port: z.number().int().min(1).max(65535) }).strict();

/** Which MSG types, and whether DATA, each op may send (anything else is a violation). */
const MSGS_BY_OP: Record<GuestRequest['op'], readonly AgentMsg['type'][]> = {
  exec: ['started'],
  attach: ['dropped'],
  ps: [],
  signal: [],
  read: ['stat'],
  write: [],
  list: ['entries'],
  stat: [],
  mkdir: [],
  remove: [],
  rename: [],
  watch: ['events'],
  tcp: [],
};
const DATA_OPS: ReadonlySet<GuestRequest['op']> = new Set(['exec', 'attach', 'read', 'tcp']);

export function opSendsData(op: GuestRequest['op']): boolean {
  return DATA_OPS.has(op);
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; why: string };

function parseJson<T>(payload: Uint8Array, schema: z.ZodType<T>, what: string): Parsed<T> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload).toString('utf8'));
  } catch {
    return { ok: false, why: `${what} is not JSON` };
  }
  const r = schema.safeParse(value);
  if (!r.success) return { ok: false, why: `${what} does not match the protocol: ${r.error.issues[0]?.message ?? 'invalid'}` };
  return { ok: true, value: r.data };
}

export function parseHelloAck(payload: Uint8Array): Parsed<HelloAck> {
  return parseJson(payload, HelloAckSchema, 'HELLO_ACK');
}

export function parseMsg(payload: Uint8Array, op: GuestRequest['op']): Parsed<AgentMsg> {
  const r = parseJson(payload, AgentMsgSchema as z.ZodType<AgentMsg>, 'MSG');
  if (r.ok && !MSGS_BY_OP[op].includes(r.value.type)) return { ok: false, why: `MSG ${r.value.type} on a ${op} stream` };
  return r;
}

export function parseEnd(payload: Uint8Array): Parsed<AgentEnd> {
  return parseJson(payload, AgentEndSchema as z.ZodType<AgentEnd>, 'END');
}
