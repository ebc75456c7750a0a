import { pack } from 'msgpackr';

/**
 * Hostile request bodies for the fuzz test (test/faults/fuzz.test.ts): mutations of a valid
 * request, broken encodings, and text no client should send (control characters, newlines,
 * lone surrogates and bytes that are not UTF-8, in keys and in values).
 */

/** mulberry32: a small seeded PRNG, so a failing request can be replayed from the seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Kind = 'id' | 'key' | 'name' | 'int' | 'bool' | 'cmd' | 'text' | 'items' | 'enum' | 'apps';
export interface Base {
  body: Record<string, unknown>;
  fields: Record<string, Kind>;
  /** Fields whose absence makes the request invalid (others have defaults: removing them is harmless). */
  required: string[];
}
/** What a hostile body is, for the figures: a mutation, or text with control bytes in a key or value. */
export type Category = 'mutation' | 'control-key' | 'control-value' | 'utf8-key' | 'utf8-value';
export interface Hostile {
  data: Uint8Array;
  contentType?: string;
  how: string;
  category: Category;
}

const enc = new TextEncoder();
/** The digest of an app layer that no store holds. */
export const NO_LAYER = 'e'.repeat(64);

const BAD_STRINGS = [
  '',
  '../../../etc/passwd',
  '/etc/shadow',
  'vm-../../../../tmp/x',
  'snap-aaaaaaaaaaaa/../../x',
  'x'.repeat(70_000),
  'vm-AAAAAAAAAAAA',
  '\u0000',
  'vm-\u0000aaaaaaaaaa',
  'vm-aaaaaaaaaaa\n',
  '%2e%2e%2f',
  '😀'.repeat(20),
  ' vm-aaaaaaaaaaaa',
];
const NOT_STRINGS = [0, 1.5, -1, true, false, null, [], {}, ['vm-aaaaaaaaaaaa'], { id: 'x' }];
const BAD_INTS = ['1', '256', 1.5, -1, 1e300, -1e300, 2 ** 60, Number.MAX_SAFE_INTEGER + 2, true, null, [], {}, [1]];
const BAD_BOOLS = ['true', 'false', 1, 0, null, [], {}, 'yes'];
const UNKNOWN_KEYS = ['x', '__proto__', 'constructor', 'prototype', 'toString', 'ID', 'hostId', 'a'.repeat(300), '', 'id ', '$where'];
/** Text a header, a log line or a terminal must not get raw: issue 15's `a\nb` among them. */
export const CONTROL_TEXT = [
  'a\nb',
  '\r\n',
  'x\r\nNats-Service-Error: forged',
  'x\u0000y',
  '\u0007',
  '\u001b[31mred\u001b[0m',
  '\u2028',
  '\u2029',
  '\u202eevil',
  '\ud800',
  '\udfff\ud800',
  'k\t',
  '\u0085',
  '\u007f',
  'vm-aaaaaaaaaaaa\n',
  `${'a\nb'.repeat(3000)}`,
];
/** Byte sequences that are not UTF-8: a stray continuation, overlong, a surrogate, cut short, 5 bytes. */
export const INVALID_UTF8 = [
  [0xff],
  [0x80],
  [0xc0, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xe2, 0x82],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0x61, 0xfe, 0x0a, 0x62],
].map((b) => Uint8Array.from(b));

/** A JSON object's text with one more member whose key or value is the raw bytes `raw`. */
function jsonWith(body: Record<string, unknown>, raw: Uint8Array, as: 'key' | 'value', field: string): Uint8Array {
  const head = JSON.stringify(body).slice(0, -1);
  const sep = head.length > 1 ? ',' : '';
  const parts =
    as === 'key'
      ? [enc.encode(`${head}${sep}"`), raw, enc.encode('":1}')]
      : [enc.encode(`${head}${sep}${JSON.stringify(field)}:"`), raw, enc.encode('"}')];
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

/** A msgpack map (fewer than 16 entries) whose extra key or value is a str of the raw bytes `raw`. */
function msgpackWith(body: Record<string, unknown>, raw: Uint8Array, as: 'key' | 'value', field: string): Uint8Array {
  const str = (b: Uint8Array): number[] => [0xd9, b.length, ...b];
  const entries = Object.entries(body).filter(([k]) => k !== field);
  const out = [0x80 | (entries.length + 1)];
  for (const [k, v] of entries) out.push(...pack(k), ...pack(v));
  if (as === 'key') out.push(...str(raw), ...pack(1));
  else out.push(...pack(field), ...str(raw));
  return Uint8Array.from(out);
}

/** The generator of hostile bodies for one run (`snapId` is a real snapshot, for batch items). */
export function hostileBodies(
  seed: number,
  snapId: string,
): { rnd: () => number; pick: <T>(xs: readonly T[]) => T; hostile: (base: Base) => Hostile } {
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const badFor = (kind: Kind): unknown => {
    switch (kind) {
      case 'id':
        return pick([...BAD_STRINGS, ...NOT_STRINGS, 'vm-zzzzzzzzzzzz', 'snap-zzzzzzzzzzzz']);
      case 'key':
        return pick([...BAD_STRINGS, ...NOT_STRINGS, 'short', 'k'.repeat(65)]);
      case 'name':
        return pick([...BAD_STRINGS, ...NOT_STRINGS, 'no-such-thing']);
      case 'int':
        return pick(BAD_INTS);
      case 'bool':
        return pick(BAD_BOOLS);
      case 'enum':
        return pick(['READY', 'now', '', 1, null, ['ready']]);
      case 'cmd':
        return pick(['true', [], [1], [null], [{}], Array.from({ length: 300 }, () => 'x'), ['x'.repeat(70_000)], null, {}]);
      case 'text':
        return pick([1, null, [], {}, 'x'.repeat((1 << 19) + 1)]);
      case 'apps':
        return pick([
          [],
          {},
          null,
          [{ layer: NO_LAYER }],
          [{ layer: 'ab', mount: '/app' }],
          [{ layer: NO_LAYER, mount: '/app/../../etc' }],
          [{ layer: NO_LAYER, mount: 'app' }],
          [{ layer: NO_LAYER, mount: '/' }],
          [{ layer: NO_LAYER, mount: '/data/x' }],
          [{ layer: NO_LAYER, mount: '/proc' }],
          [{ layer: NO_LAYER, mount: '/a b' }],
          [{ layer: `${NO_LAYER.slice(1)}/`, mount: '/app' }],
          [{ layer: NO_LAYER, mount: '/app', x: 1 }],
          [
            { layer: NO_LAYER, mount: '/app' },
            { layer: NO_LAYER, mount: '/app' },
          ],
          Array.from({ length: 5 }, (_, i) => ({ layer: NO_LAYER, mount: `/a${i}` })),
          [{ layer: NO_LAYER, mount: '/app\n' }],
          [{ layer: `${NO_LAYER}\u0000`, mount: '/app' }],
        ]);
      case 'items':
        return pick([
          [],
          {},
          'x',
          null,
          [{}],
          [{ source: snapId }],
          [{ source: snapId, count: 0 }],
          [{ source: snapId, count: 1, x: 1 }],
          [{ source: snapId, count: 1, 'a\nb': 1 }],
          Array.from({ length: 1001 }, () => ({ source: snapId, count: 1 })),
        ]);
    }
  };
  /** Text no client should send, in a key or in a value, as JS strings or as raw bytes. */
  const controlText = (base: Base, format: 'json' | 'msgpack', encode: (v: unknown) => Uint8Array): Hostile => {
    const fields = Object.keys(base.fields);
    const field = fields.length > 0 ? pick(fields) : 'x';
    const r = rnd();
    if (r < 0.3) {
      const k = pick(CONTROL_TEXT);
      const body = { ...base.body, [k]: pick([1, 'x', null]) };
      return { data: encode(body), how: `${format} key ${JSON.stringify(k.slice(0, 20))}`, category: 'control-key' };
    }
    if (r < 0.6 && fields.length > 0) {
      const v = pick(CONTROL_TEXT);
      return {
        data: encode({ ...base.body, [field]: v }),
        how: `${format} ${field}=${JSON.stringify(v.slice(0, 20))}`,
        category: 'control-value',
      };
    }
    const raw = pick(INVALID_UTF8);
    const as = r < 0.8 || fields.length === 0 ? 'key' : 'value';
    const data = format === 'json' ? jsonWith(base.body, raw, as, field) : msgpackWith(base.body, raw, as, field);
    return {
      data,
      how: `${format} ${as === 'key' ? 'key' : field} of bytes ${Buffer.from(raw).toString('hex')}`,
      category: as === 'key' ? 'utf8-key' : 'utf8-value',
    };
  };

  const hostile = (base: Base): Hostile => {
    const fields = Object.keys(base.fields);
    const format = rnd() < 0.5 ? 'json' : 'msgpack';
    const encode = (v: unknown): Uint8Array => (format === 'json' ? enc.encode(JSON.stringify(v)) : pack(v));
    const m = (data: Uint8Array, how: string, contentType?: string): Hostile => ({
      data,
      how,
      category: 'mutation',
      ...(contentType ? { contentType } : {}),
    });
    if (rnd() < 0.25) return controlText(base, format, encode);
    const r = rnd();
    if (r < 0.3 && fields.length > 0) {
      const f = pick(fields);
      const v = badFor(base.fields[f] as Kind);
      return m(encode({ ...base.body, [f]: v }), `${format} ${f}=${JSON.stringify(v)?.slice(0, 60)}`);
    }
    if (r < 0.45) {
      const k = pick(UNKNOWN_KEYS);
      const body = { ...base.body };
      Object.defineProperty(body, k, {
        value: pick([1, 'x', null, { polluted: true }]),
        enumerable: true,
        configurable: true,
        writable: true,
      });
      return m(encode(body), `${format} unknown field ${JSON.stringify(k.slice(0, 20))}`);
    }
    if (r < 0.55 && base.required.length > 0) {
      const { [pick(base.required)]: _gone, ...rest } = base.body;
      return m(encode(rest), `${format} missing a required field`);
    }
    if (r < 0.7) {
      // Truncated: never to zero bytes, which is the valid empty request `{}`.
      const full = encode(base.body);
      const cut = 1 + Math.floor(rnd() * Math.max(1, full.length - 1));
      return m(full.slice(0, cut), `${format} truncated to ${cut} of ${full.length}`);
    }
    if (r < 0.8)
      return m(
        new Uint8Array(1 + Math.floor(rnd() * 200)).map(() => Math.floor(rnd() * 256)),
        'random bytes',
      );
    if (r < 0.85) return m(encode(pick([[base.body], 'text', 42, null, true])), `${format} not a map`);
    if (r < 0.9)
      return m(encode(base.body), `${format} with the other content type`, format === 'json' ? 'application/msgpack' : 'application/json');
    if (r < 0.95) {
      const depth = 1000 + Math.floor(rnd() * 50_000);
      const data =
        format === 'json'
          ? enc.encode(`{"x":${'['.repeat(depth)}${']'.repeat(depth)}}`)
          : new Uint8Array([0x81, 0xa1, 0x78, ...new Array<number>(depth).fill(0x91), 0xc0]);
      return m(data, `${format} nested ${depth} deep`);
    }
    return m(
      enc.encode(pick(['{', '{"id":', '{"a":1}}', '{"a":NaN}', "{'a':1}", '{"count":1,}', `{"x":"${'y'.repeat(900_000)}"}`])),
      'broken JSON',
    );
  };
  return { rnd, pick, hostile };
}

/**
 * Header blocks the NATS client would refuse to send: names with a space or a control byte, a
 * Content-Type that is not UTF-8 or not a type, a forged status line or error header. `format`
 * is what the body is decoded as under it (`unparsable`: the block itself is refused).
 */
export const RAW_HEADER_BLOCKS: ReadonlyArray<{ block: Uint8Array; format: 'unparsable' | 'msgpack' | 'detect'; how: string }> = [
  { block: enc.encode('NATS/1.0\r\nBad Key: x\r\n\r\n'), format: 'unparsable', how: 'a header name with a space' },
  { block: enc.encode('NATS/1.0\r\nX\u0001Y: 1\r\n\r\n'), format: 'unparsable', how: 'a header name with a control byte' },
  {
    block: Uint8Array.from([...enc.encode('NATS/1.0\r\nContent-Type: '), 0xff, 0xfe, 0x01, ...enc.encode('\r\n\r\n')]),
    format: 'msgpack',
    how: 'a Content-Type that is not UTF-8',
  },
  {
    block: enc.encode('NATS/1.0\r\nContent-Type: \u0007text/x;;;\r\nNats-Service-Error: forged\r\n\r\n'),
    format: 'msgpack',
    how: 'a garbage Content-Type and a forged error header',
  },
  { block: enc.encode('NATS/1.0 503 forged\r\n\r\n'), format: 'detect', how: 'a forged status line' },
  { block: enc.encode('NATS/1.0\r\nContent-Type\r\n\r\n'), format: 'detect', how: 'a header without a colon' },
];
