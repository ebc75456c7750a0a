import type { AgentEnd, GuestSession } from '@forky/agent';
import { boundedText, type StreamEndBody } from '@forky/contract';

/**
 * How long a stream that never had credit lives: longer than a client's request timeout (30 s),
 * so a keyed retry after a lost reply still finds it.
 */
export const STREAM_START_IDLE_MS = 90_000;

export const json = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));

/** A resize flood goes to the guest as at most one resize per this long. */
export const RESIZE_MS = 50;

/**
 * A PTY's resizes, coalesced: only the latest size is kept, and at most one goes on per
 * `RESIZE_MS`, so a client's flood costs hostd (and the agent session) nothing.
 */
export class ResizePacer {
  #next: { rows: number; cols: number } | undefined;
  #at = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(readonly send: (rows: number, cols: number) => void) {}

  push(size: { rows: number; cols: number }): void {
    this.#next = size;
    if (this.#timer || this.#stopped) return;
    const wait = this.#at + RESIZE_MS - Date.now();
    if (wait <= 0) this.#flush();
    else this.#timer = setTimeout(() => this.#flush(), wait);
  }

  /** The stream is stopping: what is pending goes nowhere. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #flush(): void {
    this.#timer = undefined;
    const next = this.#next;
    this.#next = undefined;
    if (!next || this.#stopped) return;
    this.#at = Date.now();
    this.send(next.rows, next.cols);
  }
}

export function safeJson<T>(
  data: Uint8Array,
  schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } },
): T | undefined {
  try {
    const r = schema.safeParse(JSON.parse(new TextDecoder().decode(data)));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The `end` a client gets: a protocol violation wins; a cancelled stream says so. GONE is hostd's
 * word for a stream whose agent session ended (a snapshot's hand-over: clients open it again), so
 * a GONE while the session is still open is the guest's own and goes on as INVALID_STATE, its
 * code named in the message.
 */
export function endBody(end: AgentEnd, protocol: string | undefined, cancelled: boolean, sessionEnded = false): StreamEndBody {
  if (protocol) return { ok: false, code: 'PROTOCOL', message: boundedText(protocol, 200) };
  if (!end.ok && end.code === 'GONE' && !sessionEnded)
    return { ok: false, code: 'INVALID_STATE', message: boundedText(`GONE: ${end.message}`, 4000) };
  if (!end.ok) return { ok: false, code: boundedText(end.code, 64), message: boundedText(end.message, 4000) };
  const body: StreamEndBody = { ok: true };
  if (end.exitCode !== undefined) body.exitCode = end.exitCode;
  if (end.signal !== undefined) body.signal = end.signal;
  if (end.timedOut !== undefined) body.timedOut = end.timedOut;
  if (end.cancelled || cancelled) body.cancelled = true;
  if (end.bytes !== undefined) body.bytes = end.bytes;
  return body;
}

const ended = new WeakMap<GuestSession, () => boolean>();

/** Whether `session` has ended, as a check: one per session, so its many streams add nothing to its `closed`. */
export function endedCheck(session: GuestSession): () => boolean {
  let check = ended.get(session);
  if (!check) {
    let done = false;
    void session.closed.then(() => (done = true));
    check = () => done;
    ended.set(session, check);
  }
  return check;
}

/** The request a key names, but for the key (and the window: a retry may pick another). */
export function fingerprint(r: { key?: string; window?: number }): string {
  const { key: _key, window: _window, ...rest } = r;
  return JSON.stringify(rest);
}

/** `p`'s value, or undefined after `ms` (p goes on). */
export async function withinMs<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
