import type net from 'node:net';

/** What reading a request head gave: its bytes (and any read past it, a pipelined body), or why not. */
export type HeadRead = { ok: true; bytes: Buffer; headLength: number } | { ok: false; why: 'too-big' | 'timeout' | 'closed' };

const END = Buffer.from('\r\n\r\n');

/**
 * Reads from a paused socket until the end of the request head (CRLF CRLF), within `maxBytes` and
 * `timeoutMs`; leaves the socket paused, with nothing of it consumed but what `bytes` holds.
 */
export function readHead(sock: net.Socket, maxBytes: number, timeoutMs: number): Promise<HeadRead> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let size = 0;
    const done = (r: HeadRead): void => {
      clearTimeout(timer);
      sock.pause();
      sock.off('data', onData);
      sock.off('end', onGone);
      sock.off('close', onGone);
      resolve(r);
    };
    const onData = (b: Buffer): void => {
      // Search from just before the new chunk: the CRLF CRLF may straddle two chunks.
      const from = Math.max(0, size - (END.length - 1));
      parts.push(b);
      size += b.length;
      const all = parts.length === 1 ? b : Buffer.concat(parts);
      if (parts.length > 1) parts.splice(0, parts.length, all);
      const at = all.indexOf(END, from);
      if (at >= 0 && at + END.length <= maxBytes) return done({ ok: true, bytes: all, headLength: at + END.length });
      if (size >= maxBytes) done({ ok: false, why: 'too-big' });
    };
    const onGone = (): void => done({ ok: false, why: 'closed' });
    const timer = setTimeout(() => done({ ok: false, why: 'timeout' }), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onGone);
    sock.once('close', onGone);
    sock.resume();
  });
}

export interface RequestHead {
  method: string;
  target: string;
  /** Lowercased names; a name given twice keeps every value. */
  headers: Map<string, string[]>;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** No controls (CR, LF, NUL…) in a target or a value: nothing we echo back can split a response. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f]/;

/** Parses an HTTP/1.x request head (RFC 9112), strictly: undefined if it is not one. */
export function parseHead(head: Buffer): RequestHead | undefined {
  const text = head.toString('latin1');
  const lines = text.slice(0, -4).split('\r\n');
  const m = /^([^ ]+) ([^ ]+) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (!m || !TOKEN.test(m[1] as string) || CONTROL.test(m[2] as string)) return undefined;
  const headers = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    // Obsolete line folding and bare CR or LF are refused: proxies disagree about them (request smuggling).
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (!TOKEN.test(name) || CONTROL.test(value)) return undefined;
    const key = name.toLowerCase();
    headers.set(key, [...(headers.get(key) ?? []), value]);
  }
  return { method: m[1] as string, target: m[2] as string, headers };
}

/** A header that must be there once: its value, or undefined if it is missing or given twice. */
export function single(h: RequestHead, name: string): string | undefined {
  const v = h.headers.get(name);
  return v?.length === 1 ? v[0] : undefined;
}

/** The `forky_token` cookie, from every Cookie header. */
export function cookieToken(h: RequestHead): string | undefined {
  for (const line of h.headers.get('cookie') ?? [])
    for (const pair of line.split(';')) {
      const eq = pair.indexOf('=');
      if (eq > 0 && pair.slice(0, eq).trim() === 'forky_token') return pair.slice(eq + 1).trim();
    }
  return undefined;
}

/**
 * The target's `forky_token` query parameter, and the target without it (where the `302` sends the
 * browser: always a path on the same host, never `//elsewhere`). Undefined when there is none.
 */
export function queryToken(target: string): { token: string; rest: string } | undefined {
  const path = /^https?:\/\//i.test(target) ? target.replace(/^https?:\/\/[^/?#]*/i, '') || '/' : target;
  const q = path.indexOf('?');
  if (q < 0) return undefined;
  let token: string | undefined;
  const kept = path
    .slice(q + 1)
    .split('&')
    .filter((p) => {
      const [k, v = ''] = p.split('=', 2) as [string, string?];
      if (k !== 'forky_token') return true;
      token = safeDecode(v);
      return false;
    });
  if (token === undefined) return undefined;
  const base = '/' + path.slice(0, q).replace(/^\/+/, '');
  return { token, rest: kept.length > 0 ? `${base}?${kept.join('&')}` : base };
}

const safeDecode = (v: string): string => {
  try {
    return decodeURIComponent(v);
  } catch {
    return v;
  }
};
