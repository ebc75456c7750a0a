import { ForkyError, type ErrorCode } from '@forky/base';
import type { AgentEnd, AgentMsg, GuestRequest, GuestSession } from '@forky/agent';
import { boundedText, type GuestUnaryEndpoint, type ParsedRequestOf, type ReplyOf } from '@forky/contract';

/** How long a one-shot call in the guest may take. */
const CALL_TIMEOUT_MS = 30_000;
/** A listing stops short of this much JSON: its reply must fit NATS's 1 MiB max_payload. */
const LIST_MAX_BYTES = 768 << 10;

/**
 * The agent's error codes as the wire's: those it has by name keep it; the rest go to the
 * nearest, and `details.guest` keeps the agent's own.
 */
const CODES: Record<string, ErrorCode> = {
  NOT_FOUND: 'NOT_FOUND',
  EXISTS: 'CONFLICT',
  NOT_EMPTY: 'CONFLICT',
  BUSY: 'CAPACITY',
  PERMISSION: 'BAD_REQUEST',
  NOT_DIR: 'BAD_REQUEST',
  IS_DIR: 'BAD_REQUEST',
  INVALID: 'BAD_REQUEST',
  IO: 'INTERNAL',
  CANCELLED: 'UNAVAILABLE',
  GONE: 'UNAVAILABLE',
  PROTOCOL: 'INTERNAL',
};

/** A failed END as a ForkyError; the message comes from the guest, so it is bounded. */
export function guestError(end: Extract<AgentEnd, { ok: false }>, what: string): ForkyError {
  const code = CODES[end.code] ?? 'INTERNAL';
  return new ForkyError(code, `${what}: ${end.code}: ${boundedText(end.message, 500)}`, { details: { guest: end.code } });
}

async function call(session: GuestSession, req: GuestRequest, what: string): Promise<{ end: AgentEnd & { ok: true }; msgs: AgentMsg[] }> {
  const { end, msgs } = await session.call(req, CALL_TIMEOUT_MS);
  if (!end.ok) throw guestError(end, what);
  return { end, msgs };
}

type Unary = { [E in GuestUnaryEndpoint]: (s: GuestSession, r: ParsedRequestOf<E>) => Promise<ReplyOf<E>> };

/** The one-shot endpoints, each one agent call. */
export const unary: Unary = {
  'proc.list': async (s) => ({ processes: (await call(s, { op: 'ps' }, 'proc.list')).end.processes ?? [] }),
  'proc.signal': async (s, r) => {
    await call(s, { op: 'signal', pid: r.pid, signal: r.signal }, `signal ${r.pid}`);
    return {};
  },
  'file.list': async (s, r) => {
    const { msgs } = await call(s, { op: 'list', path: r.path }, `list ${boundedText(r.path, 200)}`);
    const entries: Array<{ name: string; stat: NonNullable<AgentEnd & { ok: true }>['stat'] & object }> = [];
    let bytes = 0;
    for (const m of msgs) {
      if (m.type !== 'entries') continue;
      for (const e of m.entries) {
        bytes += e.name.length + 96;
        if (bytes > LIST_MAX_BYTES) return { entries, truncated: true };
        entries.push(e);
      }
    }
    return { entries, truncated: false };
  },
  'file.stat': async (s, r) => {
    const { end } = await call(s, { op: 'stat', path: r.path }, `stat ${boundedText(r.path, 200)}`);
    if (!end.stat) throw new ForkyError('INTERNAL', `the guest answered stat ${boundedText(r.path, 200)} without a stat`);
    return { stat: end.stat };
  },
  'file.mkdir': async (s, r) => {
    await call(s, { op: 'mkdir', path: r.path, parents: r.parents, ...(r.perm === undefined ? {} : { perm: r.perm }) }, 'mkdir');
    return {};
  },
  'file.remove': async (s, r) => {
    await call(s, { op: 'remove', path: r.path, recursive: r.recursive }, `remove ${boundedText(r.path, 200)}`);
    return {};
  },
  'file.rename': async (s, r) => {
    await call(s, { op: 'rename', from: r.from, to: r.to }, 'rename');
    return {};
  },
};
