/**
 * Text that came from outside (a key name, a remote error, a KV entry) and is about to be shown
 * somewhere with rules: a NATS header, where CR or LF makes the client throw; a log line; a
 * validation message. Each helper returns printable text of bounded size and never throws.
 */

/** Control, line-break and invisible format characters (bidi overrides, zero-width). */
const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+/gu;
/** A UTF-16 half with no partner: not valid UTF-8 once encoded. */
const LONE_SURROGATE = /\p{Cs}/gu;
/** The longest header value we send; NATS has no limit of its own short of max_payload. */
export const HEADER_MAX_BYTES = 512;

/** Any value as a string, even one whose toString throws. */
function asString(value: unknown): string {
  if (typeof value === 'string') return value;
  try {
    return String(value);
  } catch {
    return '(unprintable)';
  }
}

/** UTF-8 length of one character (a lone surrogate counts as the U+FFFD it becomes). */
function utf8Bytes(ch: string): number {
  const cp = ch.codePointAt(0) ?? 0;
  return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

/** Cuts `s` to at most `maxBytes` of UTF-8, at a character boundary, marking the cut with `…`. */
export function truncateUtf8(s: string, maxBytes: number): string {
  let total = 0;
  for (const ch of s) total += utf8Bytes(ch);
  if (total <= maxBytes) return s;
  const room = Math.max(0, maxBytes - 3);
  let bytes = 0;
  let out = '';
  for (const ch of s) {
    const n = utf8Bytes(ch);
    if (bytes + n > room) break;
    bytes += n;
    out += ch;
  }
  return `${out}…`;
}

/** `\uXXXX` for each UTF-16 unit of `c`, as JSON writes it. */
const escapeUnits = (c: string): string =>
  [...Array(c.length).keys()].map((i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join('');

/**
 * One line fit for a NATS header value: no CR, LF or other control or format characters (each
 * run becomes one space), valid UTF-8, at most `maxBytes` bytes. What to use for every header set.
 */
export function headerText(value: unknown, maxBytes = HEADER_MAX_BYTES): string {
  const line = asString(value).replace(LONE_SURROGATE, '\uFFFD').replace(UNPRINTABLE, ' ').replace(/ {2,}/g, ' ').trim();
  return truncateUtf8(line, maxBytes);
}

/**
 * `s` quoted and escaped the way JSON.stringify does, and then every non-printable character
 * escaped too (U+2028, bidi overrides, lone surrogates): a name from a request, shown as-is yet
 * harmless. Longer than `maxChars` characters, it is cut and ends in `…` inside the quotes.
 */
export function quoteText(value: unknown, maxChars = 64): string {
  const s = asString(value);
  const chars = [...s];
  const cut = chars.length > maxChars ? `${chars.slice(0, maxChars).join('')}…` : s;
  return JSON.stringify(cut).replace(/[\p{C}\p{Zl}\p{Zp}]/gu, escapeUnits);
}

/**
 * A message for a log line or an error reply: control characters other than newline and tab
 * shown as `\uXXXX`, lone surrogates replaced, at most `maxChars` characters.
 */
export function boundedText(value: unknown, maxChars = 2000): string {
  const s = asString(value)
    .replace(LONE_SURROGATE, '\uFFFD')
    .replace(/[\p{Cc}\p{Zl}\p{Zp}]/gu, (c) => (c === '\n' || c === '\t' ? c : escapeUnits(c)));
  return s.length > maxChars ? `${s.slice(0, maxChars).replace(/[\uD800-\uDBFF]$/, '')}…` : s;
}

/** An excerpt of bytes or text for a log line: one line, at most `maxChars`, escaped. */
export function excerpt(value: Uint8Array | string, maxChars = 120): string {
  const text = typeof value === 'string' ? value : new TextDecoder('utf-8', { fatal: false }).decode(value.subarray(0, maxChars * 4));
  return quoteText(text, maxChars);
}
