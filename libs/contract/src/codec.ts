import { Packr } from 'msgpackr';
import { ValidationError } from '@forky/base';
import { boundedText } from './safe-text.js';

/**
 * Bodies are msgpack by default; a request that is JSON gets JSON back, so `nats req` works.
 * Requests are always maps, so a body starting with `{` (or empty) is JSON: in msgpack, 0x7b
 * would be the bare integer 123, never a request.
 */
export type Format = 'msgpack' | 'json';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false, int64AsType: 'number' });
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export function detectFormat(data: Uint8Array, contentType?: string): Format {
  // Any other text in the header (garbage included) means msgpack, which then fails to decode.
  if (typeof contentType === 'string' && contentType.length > 0) return contentType.toLowerCase().includes('json') ? 'json' : 'msgpack';
  if (data.length === 0) return 'json';
  const first = firstNonSpace(data);
  return first === 0x7b || first === 0x5b ? 'json' : 'msgpack';
}

/** Decodes a request or reply body; every body of the contract is a map (object). */
export function decodeBody(data: Uint8Array, contentType?: string): { format: Format; value: unknown } {
  const { format, value } = decodeAny(data, contentType);
  const proto = typeof value === 'object' && value !== null ? (Object.getPrototypeOf(value) as unknown) : undefined;
  if (proto !== Object.prototype && proto !== null) {
    throw new ValidationError(`body must be a ${format === 'json' ? 'JSON object' : 'msgpack map'}, got ${kindOf(value)}`);
  }
  return { format, value };
}

function decodeAny(data: Uint8Array, contentType?: string): { format: Format; value: unknown } {
  const format = detectFormat(data, contentType);
  if (format === 'json') {
    if (data.length === 0) return { format, value: {} };
    try {
      return { format, value: JSON.parse(dec.decode(data)) };
    } catch (e) {
      throw new ValidationError(`body is not valid JSON: ${reason(e)}`);
    }
  }
  try {
    return { format, value: packr.unpack(data) };
  } catch (e) {
    throw new ValidationError(`body is neither JSON nor valid msgpack: ${reason(e)}`);
  }
}

export function encodeBody(value: unknown, format: Format): Uint8Array {
  return format === 'json' ? enc.encode(JSON.stringify(value)) : packr.pack(value);
}

export const CONTENT_TYPE: Record<Format, string> = { json: 'application/json', msgpack: 'application/msgpack' };

/** What a decoder said, as one bounded line: V8 quotes the start of the input in its JSON errors. */
function reason(e: unknown): string {
  return boundedText(e instanceof Error ? e.message : e, 160).replace(/[\n\t]+/g, ' ');
}

/** What a decoded body is, in a word (a class name comes from a msgpack extension, so it is bounded too). */
function kindOf(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  const name: unknown = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null)?.constructor?.name;
  return typeof name === 'string' ? boundedText(name, 40) : 'an object';
}

function firstNonSpace(data: Uint8Array): number | undefined {
  for (const b of data) if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return b;
  return undefined;
}
