import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { headers } from '@nats-io/nats-core';
import { pack } from 'msgpackr';
import { z } from 'zod';
import { ForkyError, ValidationError } from '@forky/base';
import { LocatorEntry, isReadableKey, parseJsonBytes, safeHeaders } from '@forky/bus/internal';
import {
  BootRequest,
  HEADER_MAX_BYTES,
  boundedText,
  decodeBody,
  fieldPath,
  headerText,
  parseOrThrow,
  quoteText,
  toWireError,
  truncateUtf8,
} from '@forky/contract';

/** mulberry32, so a failing string can be found again from the seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The error parseOrThrow throws for `value`. */
function validationError(schema: z.ZodType, value: unknown): ValidationError {
  try {
    parseOrThrow(schema, value, 'test request');
  } catch (e) {
    assert.ok(e instanceof ValidationError);
    return e;
  }
  return assert.fail('the value was accepted');
}

describe('headerText: one safe line for a NATS header', () => {
  it('makes CR, LF, NUL, DEL, C1, U+2028 and bidi overrides one space each run, and trims', () => {
    assert.equal(headerText('a\r\nb'), 'a b');
    assert.equal(headerText('  x\u0000\u0007\u007f\u0085y\u2028z\u202e!\t '), 'x y z !');
    assert.equal(headerText('BAD_REQUEST: unknown key "a\nb"'), 'BAD_REQUEST: unknown key "a b"');
  });

  it('keeps printable UTF-8, replaces lone surrogates, and shows values that are not strings', () => {
    assert.equal(headerText('héllo 😀'), 'héllo 😀');
    assert.equal(headerText('a\ud800b\udc00'), 'a\ufffdb\ufffd');
    assert.equal(headerText(404), '404');
    assert.equal(headerText(Object.create(null)), '(unprintable)');
  });

  it('is at most HEADER_MAX_BYTES of UTF-8, cut at a character boundary', () => {
    for (const s of ['x'.repeat(10_000), 'é'.repeat(10_000), '😀'.repeat(10_000)]) {
      const h = headerText(s);
      assert.ok(Buffer.byteLength(h) <= HEADER_MAX_BYTES, `${Buffer.byteLength(h)} bytes`);
      assert.ok(h.endsWith('…'));
      assert.doesNotMatch(h, /\ufffd/, 'no character was split');
    }
    assert.equal(truncateUtf8('abcdef', 5), 'ab…');
    assert.equal(truncateUtf8('abc', 5), 'abc');
  });

  it('always gives a value the NATS client accepts, for 5,000 random strings', () => {
    const rnd = prng(15);
    for (let n = 0; n < 5000; n++) {
      const s = String.fromCharCode(
        ...Array.from({ length: Math.floor(rnd() * 40) }, () => (rnd() < 0.5 ? Math.floor(rnd() * 0x80) : Math.floor(rnd() * 0x10000))),
      );
      const h = headers();
      assert.doesNotThrow(() => h.set('Nats-Service-Error', headerText(s)), JSON.stringify(s));
      assert.doesNotMatch(headerText(s), /[\p{Cc}\p{Cs}]/u);
    }
    // The bus helper every header goes through.
    assert.equal(safeHeaders({ 'Nats-Service-Error': 'x\ny' }).get('Nats-Service-Error'), 'x y');
  });
});

describe('quoteText and boundedText', () => {
  it('quotes like JSON and escapes what JSON leaves raw', () => {
    assert.equal(quoteText('a\nb'), '"a\\nb"');
    assert.equal(quoteText('a"b\\'), '"a\\"b\\\\"');
    assert.equal(quoteText('x\u2028\u202e\u007f'), '"x\\u2028\\u202e\\u007f"');
    assert.equal(quoteText('\ud800'), '"\\ud800"');
    assert.equal(quoteText('k'.repeat(100), 10), `"${'k'.repeat(10)}…"`);
  });

  it('keeps newlines in a bounded message and escapes other controls', () => {
    assert.equal(boundedText('a\nb\u0000c\rd'), 'a\nb\\u0000c\\u000dd');
    assert.equal(boundedText('z'.repeat(50), 10), `${'z'.repeat(10)}…`);
  });
});

describe('validation messages name the field, escaped and bounded', () => {
  it('the key of issue 15 is named escaped: no newline in the message', () => {
    const e = validationError(BootRequest, { image: 'tiny', 'a\nb': 1 });
    assert.equal(e.message, 'invalid test request: (body): unknown key "a\\nb"');
    assert.doesNotMatch(e.message, /\p{Cc}/u);
  });

  it('many or long unknown keys: five named, the rest counted, each cut', () => {
    const body = Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`${'k'.repeat(5000)}${i}`, i]));
    const e = validationError(BootRequest, body);
    assert.ok(e.message.length < 600, `${e.message.length} characters`);
    assert.match(e.message, /unknown keys "k{40}…", .* and 995 more/);
  });

  it('a nested field is a dotted path; a key in it that is not a plain name is quoted', () => {
    const schema = z.strictObject({ items: z.array(z.strictObject({ n: z.number() })), tags: z.record(z.string(), z.number()) });
    assert.equal(validationError(schema, { items: [{ n: 'x' }], tags: {} }).details?.field, 'items.0.n');
    const e = validationError(schema, { items: [], tags: { 'bad\r\nkey': 'x' } });
    assert.equal(e.details?.field, 'tags."bad\\r\\nkey"');
    assert.equal(fieldPath([]), '(body)');
    assert.equal(fieldPath(Array.from({ length: 20 }, () => 'a')), `${Array.from({ length: 8 }, () => 'a').join('.')}.…`);
  });

  it('a plain field keeps the name tests and callers match on', () => {
    assert.equal(validationError(BootRequest, { memMiB: 'lots' }).details?.field, 'memMiB');
  });
});

describe('decodeBody refuses what is not a body, with a bounded one-line reason', () => {
  it('invalid UTF-8, a body that is not a map, garbage content types: BAD_REQUEST', () => {
    const cases: Array<[Uint8Array, string | undefined]> = [
      [Uint8Array.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]), undefined],
      [new TextEncoder().encode(`{"a\n":1, "${'x'.repeat(1000)}`), undefined],
      [new TextEncoder().encode('[1,2]'), undefined],
      [pack('text'), undefined],
      [pack(new Date()), undefined],
      [new TextEncoder().encode('{}'), '\u0000garbage'],
      [new Uint8Array(), 'application/msgpack'],
    ];
    for (const [data, contentType] of cases) {
      assert.throws(
        () => decodeBody(data, contentType),
        (e: unknown) => e instanceof ValidationError && e.message.length < 400 && !/[\r\n]/.test(e.message),
        `${Buffer.from(data).toString('hex').slice(0, 40)} as ${contentType}`,
      );
    }
    assert.deepEqual(decodeBody(new TextEncoder().encode('{"a":1}'), 'APPLICATION/JSON; charset=utf-8').value, { a: 1 });
  });
});

describe('the wire error and KV entries', () => {
  it('an error message on the wire is bounded; an unknown code is INTERNAL', () => {
    const w = toWireError(new ForkyError('NOT_FOUND', 'm'.repeat(100_000), { details: { field: 'id', big: 'b'.repeat(100_000) } }));
    assert.ok(w.error.message.length <= 4001);
    assert.deepEqual(w.error.details, { field: 'id' });
    assert.equal(toWireError(new ForkyError('NOPE' as 'INTERNAL', 'x')).error.code, 'INTERNAL');
  });

  it('a KV entry is checked: not UTF-8, not JSON, the wrong shape are each a reason, never a throw', () => {
    const enc = new TextEncoder();
    assert.deepEqual(parseJsonBytes(LocatorEntry, enc.encode('{"host":"h1"}')), { ok: true, value: { host: 'h1' } });
    for (const bytes of [
      enc.encode('{}'),
      Uint8Array.from([0xff, 0x7b]),
      enc.encode('{"host":"a\\nb"}'),
      enc.encode('null'),
      enc.encode('{"host":"h1","x":1}'),
    ]) {
      const r = parseJsonBytes(LocatorEntry, bytes);
      assert.equal(r.ok, false);
      assert.ok(!r.ok && !/[\r\n]/.test(r.why) && r.why.length < 300, !r.ok ? r.why : '');
    }
    assert.ok(isReadableKey('vm.vm-aaaaaaaaaaaa'));
    for (const k of ['', '.x', 'x.', 'a b', 'a\u0001', 'ü', '*', '>']) assert.equal(isReadableKey(k), false, JSON.stringify(k));
  });
});
