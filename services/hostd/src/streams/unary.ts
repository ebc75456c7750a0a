import { DeadlineError, ForkyError, type ErrorCode } from '@forky/base';
import type { AgentEnd, AgentMsg, GuestRequest, GuestSession, GuestStat } from '@forky/agent';
import { boundedText, type GuestUnaryEndpoint, type ParsedRequestOf, type ReplyOf } from '@forky/contract';

/** How long a one-shot call in the guest may take. */
const CALL_TIMEOUT_MS = 30_000;
/** A listing stops short of this many bytes of JSON: its reply must fit NATS's 1 MiB max_payload. */
export const LIST_MAX_BYTES = 768 << 10;

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

type Entry = { name: string; stat: GuestStat };

/**
 * A listing as a stream, so it stops (the guest's stream cancelled) once the reply is full:
 * counted in bytes of JSON, as the reply is (a CJK or escaped name is several per character).
 */
async function list(s: GuestSession, path: string): Promise<{ entries: Entry[]; truncated: boolean }> {
  const what = `list ${boundedText(path, 200)}`;
  const stream = s.open({ op: 'list', path });
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    stream.cancel();
  }, CALL_TIMEOUT_MS);
  const entries: Entry[] = [];
  let bytes = 0;
  try {
    for await (const ev of stream.events) {
      if (late) throw new DeadlineError(what, CALL_TIMEOUT_MS);
      if (ev.kind === 'end') {
        if (ev.end.ok) return { entries, truncated: false };
        throw guestError(ev.end, what);
      }
      if (ev.kind !== 'msg' || ev.msg.type !== 'entries') continue;
      for (const e of ev.msg.entries) {
        bytes += Buffer.byteLength(JSON.stringify(e)) + 1;
        // Leaving the loop cancels the guest's stream: it lists no more.
        if (bytes > LIST_MAX_BYTES) return { entries, truncated: true };
        entries.push(e);
      }
    }
    const end = await stream.ended;
    if (late) throw new DeadlineError(what, CALL_TIMEOUT_MS);
    if (!end.ok) throw guestError(end, what);
    return { entries, truncated: false };
  } finally {
    clearTimeout(timer);
    stream.cancel();
  }
}

type Unary = { [E in GuestUnaryEndpoint]: (s: GuestSession, r: ParsedRequestOf<E>) => Promise<ReplyOf<E>> };

/** The one-shot endpoints, each one agent call. */
export const unary: Unary = {
  'proc.list': async (s) => ({ processes: (await call(s, { op: 'ps' }, 'proc.list')).end.processes ?? [] }),
  'proc.signal': async (s, r) => {
    await call(s, { op: 'signal', pid: r.pid, signal: r.signal }, `signal ${r.pid}`);
    return {};
  },
  'file.list': (s, r) => list(s, r.path),
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
