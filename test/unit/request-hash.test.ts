import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { requestHash } from '@forky/scheduler/internal';

describe('requestHash: the same idempotency key must mean the same request', () => {
  it("tells apart requests that differ only in nested fields (a batch's items)", () => {
    const a = requestHash('batch', { key: 'k-00000001', items: [{ source: 'snap-aaaaaaaaaaaa', count: 1 }] });
    const b = requestHash('batch', { key: 'k-00000001', items: [{ source: 'snap-bbbbbbbbbbbb', count: 1 }] });
    assert.notEqual(a, b);
  });

  it('ignores the key, key order and undefined fields', () => {
    const a = requestHash('fork', { key: 'k-00000001', source: 'snap-aaaaaaaaaaaa', count: 2, host: undefined });
    const b = requestHash('fork', { count: 2, source: 'snap-aaaaaaaaaaaa', key: 'k-00000002' });
    assert.equal(a, b);
    assert.notEqual(a, requestHash('vm.boot', { count: 2, source: 'snap-aaaaaaaaaaaa' }));
  });
});
