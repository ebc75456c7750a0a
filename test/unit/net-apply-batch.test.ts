import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ApplyBatches, type BatchSteps } from '@forky/hostd/internal';

/** The filter's queue (one change at a time) and steps that note what they did; `refuse` makes nft refuse a script containing it. */
function harness(refuse: string[] = [], failPrepare: string[] = []) {
  let queue: Promise<unknown> = Promise.resolve();
  const log: string[] = [];
  const enqueue = (fn: () => Promise<void>): Promise<void> => {
    const next = queue.then(fn, fn);
    queue = next.catch(() => undefined);
    return next;
  };
  const steps: BatchSteps = {
    prepare: async (vm) => {
      if (failPrepare.includes(vm)) throw new Error(`no cgroup for ${vm}`);
      log.push(`prepare ${vm}`);
      return true;
    },
    run: async (script) => {
      const bad = refuse.find((r) => script.includes(r));
      log.push(`run ${script.trim().split('\n').join('+')}${bad ? ' refused' : ''}`);
      if (bad) throw new Error(`nft refused ${bad}`);
    },
    undo: async (vm) => void log.push(`undo ${vm}`),
  };
  const batches = new ApplyBatches(enqueue, steps);
  /** Another change (a remove): closes the open batch, as the filter's `serial` does. */
  const other = (what: string): Promise<void> => {
    batches.close();
    return enqueue(async () => void log.push(what));
  };
  return { batches, log, other };
}

describe('egress filter applies queued together run as one nft transaction', () => {
  it('three applies of one tick: one transaction, each resolved', async () => {
    const { batches, log } = harness();
    await Promise.all(['a', 'b', 'c'].map((vm) => batches.add(vm, `apply ${vm}\n`)));
    assert.deepEqual(log, ['prepare a', 'prepare b', 'prepare c', 'run apply a+apply b+apply c']);
  });

  it('a change queued behind a batch closes it: a later apply of the same VM runs after that change', async () => {
    const { batches, log, other } = harness();
    await Promise.all([batches.add('a', 'apply a\n'), other('remove a'), batches.add('a', 'apply a again\n')]);
    assert.deepEqual(log, ['prepare a', 'run apply a', 'remove a', 'prepare a', 'run apply a again']);
  });

  it('a refused transaction is run member by member: only the bad one fails, and only its cgroup goes', async () => {
    const { batches, log } = harness(['bad']);
    const r = await Promise.allSettled(['a', 'bad', 'c'].map((vm) => batches.add(vm, `apply ${vm}\n`)));
    assert.deepEqual(
      r.map((x) => x.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.match(String((r[1] as PromiseRejectedResult).reason), /nft refused bad/);
    assert.deepEqual(log.slice(3), [
      'run apply a+apply bad+apply c refused',
      'run apply a',
      'run apply bad refused',
      'undo bad',
      'run apply c',
    ]);
  });

  it('an apply alone that is refused rejects with its cause and takes its cgroup back', async () => {
    const { batches, log } = harness(['bad']);
    await assert.rejects(batches.add('bad', 'apply bad\n'), /nft refused bad/);
    assert.deepEqual(log, ['prepare bad', 'run apply bad refused', 'undo bad']);
  });

  it('a member whose cgroup cannot be made fails alone; the rest are applied', async () => {
    const { batches, log } = harness([], ['b']);
    const r = await Promise.allSettled(['a', 'b', 'c'].map((vm) => batches.add(vm, `apply ${vm}\n`)));
    assert.deepEqual(
      r.map((x) => x.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.deepEqual(log, ['prepare a', 'prepare c', 'run apply a+apply c']);
  });

  it('applies arriving while a batch runs make the next batch', async () => {
    const { batches, log } = harness();
    const first = batches.add('a', 'apply a\n');
    await new Promise((r) => setImmediate(r)); // the first batch has started
    await Promise.all([first, batches.add('b', 'apply b\n'), batches.add('c', 'apply c\n')]);
    assert.deepEqual(log, ['prepare a', 'run apply a', 'prepare b', 'prepare c', 'run apply b+apply c']);
  });
});
