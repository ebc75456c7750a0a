import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pack } from 'msgpackr';
import { ValidationError } from '@forky/base';
import { BootRequest, ForkRequest, decodeBody, detectFormat, encodeBody, parseOrThrow, subjects, VmRef } from '@forky/contract';

describe('codec', () => {
  it('detects JSON by its first byte and msgpack otherwise', () => {
    assert.equal(detectFormat(new TextEncoder().encode(' {"a":1}')), 'json');
    assert.equal(detectFormat(new Uint8Array()), 'json');
    assert.equal(detectFormat(pack({ a: 1 })), 'msgpack');
    assert.equal(detectFormat(pack({ a: 1 }), 'application/json'), 'json');
  });

  it('round-trips both formats', () => {
    const v = { id: 'vm-abcdefghijkm', n: 3, list: ['a'], nested: { ok: true } };
    for (const f of ['json', 'msgpack'] as const) assert.deepEqual(decodeBody(encodeBody(v, f)).value, v);
    assert.deepEqual(decodeBody(new Uint8Array()).value, {});
  });

  it('rejects bodies that are neither, with a ValidationError', () => {
    assert.throws(() => decodeBody(Uint8Array.from([0xc1])), ValidationError);
    assert.throws(() => decodeBody(new TextEncoder().encode('{"a":')), /not valid JSON/);
    assert.throws(() => decodeBody(pack({ abc: 'defghij' }).subarray(0, 5)), ValidationError);
  });

  it('does not let __proto__ in a body change an object prototype', () => {
    const v = decodeBody(new TextEncoder().encode('{"__proto__": {"polluted": true}}')).value as Record<string, unknown>;
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.throws(() => parseOrThrow(VmRef, v, 'x'), ValidationError);
  });
});

describe('schemas', () => {
  it('fills defaults and rejects unknown fields, naming them', () => {
    assert.deepEqual(BootRequest.parse({}), { image: 'tiny', memMiB: 256, cpus: 1, gpus: 0 });
    assert.throws(
      () => parseOrThrow(BootRequest, { imag: 'tiny' }, 'boot'),
      (e: unknown) => e instanceof ValidationError && /imag/.test(e.message),
    );
  });

  it('bounds fork counts and checks sources', () => {
    assert.throws(
      () => parseOrThrow(ForkRequest, { source: 'vm-abcdefghijkm', count: 0 }, 'fork'),
      (e: unknown) => e instanceof ValidationError && e.details?.field === 'count',
    );
    assert.throws(() => parseOrThrow(ForkRequest, { source: 'vm-abcdefghijkm', count: 1001 }, 'fork'), /count/);
    assert.throws(() => parseOrThrow(ForkRequest, { source: '../x', count: 1 }, 'fork'), /source/);
    assert.equal(parseOrThrow(ForkRequest, { source: 'snap-abcdefghijkm', count: 2 }, 'fork').resumeParent, false);
  });

  it('builds subjects only for valid host ids', () => {
    assert.equal(subjects.host('h1', 'fork'), 'forky.v1.host.h1.fork');
    assert.throws(() => subjects.host('h1.*', 'fork'));
    assert.throws(() => subjects.host('>', 'fork'));
  });
});
