import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pollUntil, silentLogger } from '@forky/base';
import { WarmPool, type WarmChild } from '@forky/hostd';

/** A pool over fake processes: records what was made and discarded. */
function fakePool(size: number, maxSnapshots: number, opts: { slowMake?: Promise<void> } = {}) {
  const made: string[] = [];
  const discarded: string[] = [];
  let n = 0;
  const pool = new WarmPool(
    { size, maxSnapshots },
    async (snap) => {
      await opts.slowMake;
      const c: WarmChild = { id: `${snap}#${n++}`, mac: '02:00:00:00:00:00', top: `lyr-${n}`, handle: {} };
      made.push(c.id);
      return c;
    },
    async (c) => void discarded.push(c.id),
    silentLogger(),
  );
  return { pool, made, discarded };
}

describe('warm pool', () => {
  it('is cold until a snapshot is forked, then keeps `size` processes and refills after a take', async () => {
    const { pool } = fakePool(2, 4);
    assert.equal(pool.take('s1'), undefined, 'nothing waits for a snapshot never forked');
    pool.refill('s1');
    await pollUntil(async () => (pool.size() === 2 ? true : undefined), { timeoutMs: 1000, what: 'pool filled' });
    const c = pool.take('s1');
    assert.ok(c?.id.startsWith('s1#'));
    pool.refill('s1');
    await pollUntil(async () => (pool.size() === 2 ? true : undefined), { timeoutMs: 1000, what: 'pool refilled' });
    assert.equal(pool.layers().length, 2);
  });

  it('drops the pool of the snapshot forked least recently past maxSnapshots', async () => {
    const { pool, discarded } = fakePool(1, 2);
    for (const s of ['a', 'b']) pool.refill(s);
    await pollUntil(async () => (pool.size() === 2 ? true : undefined), { timeoutMs: 1000, what: 'two pools' });
    pool.take('a'); // a is now the most recent
    pool.refill('a');
    pool.refill('c');
    await pollUntil(async () => (discarded.some((id) => id.startsWith('b#')) ? true : undefined), { timeoutMs: 1000, what: 'b evicted' });
    assert.equal(pool.take('b'), undefined);
  });

  it('discards a process still being made when its snapshot is dropped, and never hands it out', async () => {
    let release!: () => void;
    const slowMake = new Promise<void>((r) => (release = r));
    const { pool, made, discarded } = fakePool(1, 4, { slowMake });
    pool.refill('s');
    const dropped = pool.drop('s');
    release();
    await dropped;
    assert.deepEqual(discarded, made, 'what was made after the drop is discarded');
    assert.equal(pool.size(), 0);
    assert.equal(pool.take('s'), undefined);
  });

  it('size 0 is off', () => {
    const { pool, made } = fakePool(0, 4);
    pool.refill('s');
    assert.equal(pool.take('s'), undefined);
    assert.equal(made.length, 0);
  });
});
