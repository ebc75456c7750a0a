import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pollUntil, silentLogger } from '@forky/base';
import { WarmPool, loadWarm, type VmHandle, type VmRuntime, type VmSpec, type WarmChild } from '@forky/hostd/internal';

/** A runtime of fake processes, enough for loadWarm: only the fresh one (pid 2) loads, as a dead one's closed QMP socket fails. */
function fakeRuntime() {
  const calls: string[] = [];
  const proc = (pid: number, dead: boolean): VmHandle => ({ pid, exited: dead ? Promise.resolve() : new Promise<void>(() => undefined) });
  const runtime = {
    async load(h: VmHandle) {
      calls.push(`load ${h.pid}`);
      if (h.pid !== 2) throw new Error('QMP: connection closed');
    },
    async prepare(spec: VmSpec) {
      calls.push(`prepare ${spec.id}`);
      return proc(2, false);
    },
    async destroy(h: VmHandle) {
      calls.push(`destroy ${h.pid}`);
    },
  } as unknown as VmRuntime;
  return { runtime, calls, deadProc: () => proc(1, true), liveButFailing: () => proc(13, false) };
}

/** A pool over fake processes: records what was made and discarded; `die(id)` makes one exit. */
function fakePool(size: number, maxSnapshots: number, opts: { slowMake?: Promise<void> } = {}) {
  const made: string[] = [];
  const discarded: string[] = [];
  const deaths = new Map<string, () => void>();
  let n = 0;
  const pool = new WarmPool(
    { size, maxSnapshots },
    async (snap) => {
      await opts.slowMake;
      const id = `${snap}#${n++}`;
      const exited = new Promise<void>((r) => deaths.set(id, r));
      const c = { id, mac: '02:00:00:00:00:00', top: `lyr-${n}`, handle: {}, exited };
      made.push(c.id);
      return c as WarmChild;
    },
    async (c) => void discarded.push(c.id),
    silentLogger(),
  );
  const die = (id: string): void => deaths.get(id)?.();
  return { pool, made, discarded, die };
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

  it('drops a waiting process that exits, never hands it out, and starts a new one in its place', async () => {
    const { pool, made, discarded, die } = fakePool(1, 4);
    pool.refill('s');
    await pollUntil(async () => (pool.size('s') === 1 ? true : undefined), { timeoutMs: 1000, what: 'pool filled' });
    const dead = made[0] as string;
    die(dead);
    await pollUntil(async () => (discarded.includes(dead) ? true : undefined), { timeoutMs: 1000, what: 'dead process discarded' });
    await pollUntil(async () => (pool.size('s') === 1 ? true : undefined), { timeoutMs: 1000, what: 'pool refilled after the death' });
    const c = pool.take('s');
    assert.ok(c && c.id !== dead, `a live process is handed out, not ${dead}`);
    assert.deepEqual(discarded, [dead]);
  });

  it('does not hand out a process whose exit comes between its death and the take', async () => {
    const { pool, made, die } = fakePool(1, 4);
    pool.refill('s');
    await pollUntil(async () => (pool.size('s') === 1 ? true : undefined), { timeoutMs: 1000, what: 'pool filled' });
    die(made[0] as string);
    // Exit handlers run as microtasks: yield once, as an incoming request would.
    await new Promise((r) => setImmediate(r));
    assert.notEqual(pool.take('s')?.id, made[0]);
  });

  it('stops replacing processes of a snapshot that keep dying, until its next fork', async () => {
    const { pool, made, die } = fakePool(1, 4);
    pool.refill('s');
    for (let i = 0; i < 10; i++) {
      const seen = await pollUntil(async () => (made.length > i ? true : undefined), { timeoutMs: 1000, what: `process ${i} made` }).then(
        () => true,
        () => false,
      );
      if (!seen) break;
      await pollUntil(async () => (pool.size('s') === 1 ? true : undefined), { timeoutMs: 1000, what: `process ${i} ready` });
      die(made[i] as string);
    }
    assert.ok(made.length <= 4, `${made.length} processes made for a snapshot whose processes all die`);
    const count = made.length;
    pool.take('s');
    pool.refill('s');
    await pollUntil(async () => (made.length > count ? true : undefined), { timeoutMs: 1000, what: 'a fork refills again' });
  });

  it('size 0 is off', () => {
    const { pool, made } = fakePool(0, 4);
    pool.refill('s');
    assert.equal(pool.take('s'), undefined);
    assert.equal(made.length, 0);
  });
});

describe('loading a fork into a warm process', () => {
  const spec = { id: 'vm-aaaaaaaaaaaa' } as VmSpec;
  it('starts a fresh process when the one taken had died before its exit was seen', async () => {
    const { runtime, calls, deadProc } = fakeRuntime();
    const r = await loadWarm(runtime, deadProc(), spec, 'state', 1000, silentLogger());
    assert.equal(r.replaced, true);
    assert.equal(r.handle.pid, 2);
    assert.deepEqual(calls, ['load 1', 'destroy 1', `prepare ${spec.id}`, 'load 2']);
  });

  it('fails as the load did when the process is alive (nothing is started in its place)', async () => {
    const { runtime, calls, liveButFailing } = fakeRuntime();
    await assert.rejects(loadWarm(runtime, liveButFailing(), spec, 'state', 1000, silentLogger()), /connection closed/);
    assert.deepEqual(calls, ['load 13']);
  });
});
