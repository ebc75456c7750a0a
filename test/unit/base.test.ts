import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import {
  InvalidStateError,
  KeyedMutex,
  ValidationError,
  mapSettled,
  parseConfig,
  safeJoin,
  withDeadline,
  DeadlineError,
} from '@forky/base';
import { assertAllowed, assertTransition } from '@forky/hostd';

describe('safeJoin', () => {
  it('keeps paths inside their root', () => {
    assert.equal(safeJoin('/data', 'vms', 'vm-1'), '/data/vms/vm-1');
    for (const bad of ['../etc', '/etc', 'a/../../b', '', 'x\0y']) assert.throws(() => safeJoin('/data', 'vms', bad), ValidationError, bad);
  });
});

describe('VM state machine', () => {
  it('allows an operation only in its states, with a typed error', () => {
    assert.doesNotThrow(() => assertAllowed('vm-x', 'running', 'pause'));
    assert.throws(() => assertAllowed('vm-x', 'paused', 'pause'), InvalidStateError);
    assert.throws(() => assertAllowed('vm-x', 'destroyed', 'destroy'), /cannot destroy/);
    assert.throws(
      () => assertAllowed('vm-x', 'booting', 'exec'),
      (e: unknown) => e instanceof InvalidStateError && e.code === 'INVALID_STATE',
    );
  });

  it('refuses illegal transitions', () => {
    assert.doesNotThrow(() => assertTransition('vm-x', 'paused', 'snapshotting'));
    assert.throws(() => assertTransition('vm-x', 'destroyed', 'running'), InvalidStateError);
    assert.throws(() => assertTransition('vm-x', 'booting', 'paused'), InvalidStateError);
  });
});

describe('async helpers', () => {
  it('withDeadline rejects late work', async () => {
    await assert.rejects(withDeadline(new Promise(() => undefined), 20, 'never'), DeadlineError);
    assert.equal(await withDeadline(Promise.resolve(7), 20, 'now'), 7);
  });

  it('mapSettled bounds concurrency and keeps order', async () => {
    let inFlight = 0;
    let peak = 0;
    const r = await mapSettled([1, 2, 3, 4, 5], 2, async (n) => {
      peak = Math.max(peak, ++inFlight);
      await new Promise((res) => setImmediate(res));
      inFlight--;
      if (n === 3) throw new Error('three');
      return n * 2;
    });
    assert.equal(peak, 2);
    assert.deepEqual(
      r.map((x) => (x.status === 'fulfilled' ? x.value : 'x')),
      [2, 4, 'x', 8, 10],
    );
  });

  it('KeyedMutex runs work on one key one at a time', async () => {
    const m = new KeyedMutex();
    const order: string[] = [];
    await Promise.all([
      m.run('a', async () => {
        order.push('a1+');
        await new Promise((r) => setTimeout(r, 10));
        order.push('a1-');
      }),
      m.run('a', async () => {
        order.push('a2');
      }),
    ]);
    assert.deepEqual(order, ['a1+', 'a1-', 'a2']);
  });
});

describe('config', () => {
  const S = z.strictObject({ a: z.number(), nested: z.strictObject({ b: z.string().default('x') }).prefault({}) });
  it('layers later over earlier, freezes, and names a bad field', () => {
    const c = parseConfig(S, { a: 1 }, { a: 2 }, { nested: { b: undefined } });
    assert.deepEqual(c, { a: 2, nested: { b: 'x' } });
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.nested));
    assert.throws(
      () => parseConfig(S, { a: 'no' }),
      (e: unknown) => e instanceof ValidationError && e.details?.field === 'a',
    );
    assert.throws(() => parseConfig(S, { a: 1, extra: 1 }), ValidationError);
  });
});
