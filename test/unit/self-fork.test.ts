import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SELF_FORK_LINE_MAX, SELF_FORK_RESULT_MAX, type SelfForkPolicy, type VmEvent } from '@forky/contract';
import {
  LineReader,
  SELF_FORK_RATE,
  SelfForkRefusal,
  aliveInTree,
  checkBudget,
  childSelfFork,
  spreadToken,
  type SelfForkRecord,
} from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { boot, fork, reportDuration } from '../helpers/engine-checks.js';

const POLICY: SelfForkPolicy = { maxChildren: 10, maxDepth: 1, maxAlive: 4 };
/** Each request gets a fresh id (16 hex), kept in `lastId` to check the replies echo it. */
let seq = 0;
let lastId = '';
const req = (o: Record<string, unknown>): string => {
  lastId = (++seq).toString(16).padStart(16, '0');
  return JSON.stringify({ v: 1, id: lastId, ...o });
};
type Reply = {
  id?: string;
  ok: boolean;
  code?: string;
  message?: string;
  role?: string;
  children?: string[];
  index?: number;
  results?: unknown[];
};
const last = (h: EngineHost, id: string): Reply => h.runtime.repliesTo(id).at(-1) as Reply;
/** What a refusal must leave as it was: the VMs, the snapshots, the processes. */
const state = (h: EngineHost): string =>
  JSON.stringify([h.engine.list().map((v) => [v.id, v.state, v.selfFork]), h.engine.listSnapshots().length, h.runtime.live().length]);

describe('self-fork: the line reader bounds what a guest sends', () => {
  it('splits lines across chunks, skips empty ones, and passes a line of exactly the limit', () => {
    const r = new LineReader(8);
    assert.deepEqual(r.push(Buffer.from('ab')), []);
    assert.deepEqual(r.push(Buffer.from('c\n\n12345678\nx')), [{ line: 'abc' }, { line: '12345678' }]);
    assert.deepEqual(r.push(Buffer.from('\n')), [{ line: 'x' }]);
  });

  it('a line over the limit is reported once and dropped up to its newline, however long it goes on', () => {
    const r = new LineReader(8);
    assert.deepEqual(r.push(Buffer.from('123456789')), [{ tooLong: true }]);
    // Megabytes more of the same line: nothing is reported or held.
    for (let i = 0; i < 16; i++) assert.deepEqual(r.push(Buffer.alloc(1 << 20, 0x61)), []);
    assert.deepEqual(r.push(Buffer.from('tail\nok\n')), [{ line: 'ok' }]);
    // Split over two chunks, the limit counts both.
    assert.deepEqual(r.push(Buffer.from('12345')), []);
    assert.deepEqual(r.push(Buffer.from('6789\nnext\n')), [{ tooLong: true }, { line: 'next' }]);
  });

  it('defaults to the protocol limit', () => {
    const r = new LineReader();
    assert.deepEqual(r.push(Buffer.from(`${'a'.repeat(SELF_FORK_LINE_MAX)}\n`)), [{ line: 'a'.repeat(SELF_FORK_LINE_MAX) }]);
    assert.deepEqual(r.push(Buffer.from(`${'a'.repeat(SELF_FORK_LINE_MAX + 1)}\n`)), [{ tooLong: true }]);
  });
});

describe('self-fork: budget and rate', () => {
  const sf = (o: Partial<SelfForkRecord> = {}): SelfForkRecord => ({
    policy: POLICY,
    root: 'vm-root00000000',
    depth: 0,
    children: 0,
    ...o,
  });
  const refused = (fn: () => void, code: string, text: RegExp): void =>
    assert.throws(fn, (e: unknown) => e instanceof SelfForkRefusal && e.code === code && text.test(e.message));

  it('no policy, too deep, too many children, too many alive: each refused by name; the bounds themselves pass', () => {
    refused(() => checkBudget(undefined, 1, 1), 'FORBIDDEN', /^self-fork is off for this VM: boot it with a selfFork policy$/);
    refused(() => checkBudget(sf({ depth: 2 }), 1, 1), 'FORBIDDEN', /maxDepth 1/);
    checkBudget(sf({ depth: 1 }), 1, 1);
    refused(() => checkBudget(sf({ children: 8 }), 3, 1), 'CAPACITY', /maxChildren/);
    checkBudget(sf({ children: 8 }), 2, 1);
    refused(() => checkBudget(sf(), 3, 2), 'CAPACITY', /5 VMs alive .* at most 4 \(maxAlive\)/);
    checkBudget(sf(), 3, 1);
    refused(() => checkBudget(sf({ pending: true }), 1, 1), 'INVALID_STATE', /still being made/);
  });

  it('counts a tree alive: its own root only, not the failed, gone or still pending', () => {
    const r = 'vm-root00000000';
    const vms = [
      { state: 'running' as const, selfFork: sf() },
      { state: 'paused' as const, selfFork: sf({ depth: 1 }) },
      { state: 'failed' as const, selfFork: sf({ depth: 1 }) },
      { state: 'destroying' as const, selfFork: sf({ depth: 1 }) },
      { state: 'restoring' as const, selfFork: sf({ depth: 1, pending: true }) },
      { state: 'running' as const, selfFork: sf({ root: 'vm-other0000000' }) },
      { state: 'running' as const },
    ];
    assert.equal(aliveInTree(vms, r), 2);
  });

  it("a spread child's token: what it says comes back whole; anything else gives no standing", () => {
    const child = sf({ depth: 1 });
    const token = spreadToken('vm-parent000000', 2, 3, child, 'ab'.repeat(8));
    const got = childSelfFork(undefined, { FORKY_SELF_FORK: token });
    assert.deepEqual(got, {
      ...child,
      // Past maxDepth: a spread child may not self-fork (no host sees its whole tree to count it).
      depth: POLICY.maxDepth + 1,
      parent: 'vm-parent000000',
      index: 2,
      pending: true,
      spread: { count: 3, id: 'ab'.repeat(8) },
    });
    refused(() => checkBudget({ ...got!, pending: undefined } as SelfForkRecord, 1, 1), 'FORBIDDEN', /maxDepth/);
    for (const bad of [
      token.replace(',2,3,', ',4,3,'), // index past count
      token.replace(/,4,(\w+)$/, ',1,$1'), // maxAlive 1: not a policy
      token.replace(/,\w+$/, ',ABABABABABABABAB'), // not a request id
      `${token},1`,
      token.replace('vm-parent000000', 'vm-PARENT'),
      '',
    ])
      assert.equal(childSelfFork(undefined, { FORKY_SELF_FORK: bad }), undefined, bad);
    assert.equal(childSelfFork(child, { FORKY_SELF_FORK: token }), child, "a local self-fork's own standing wins");
  });
});

/** The rate is per tree: tests that send more than its burst across one tree raise it. */
const FAST = { limits: { selfForkRate: { perSec: 1000, burst: 1000 } } };
describe('self-fork: the engine on a dry-run runtime', () => {
  it('a fork: the parent gets the ids, each child its index; the tree, the counts and the event follow', async (t) => {
    const events: VmEvent[] = [];
    const h = await hostFor(t, { events: { publish: (e) => events.push(e) } });
    const root = await boot(h, { selfFork: POLICY });
    assert.deepEqual(root.selfFork, { policy: POLICY, root: root.id, depth: 0, children: 0 });
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 2, labels: { job: 'a' } }));
    const forkId = lastId;
    const p = last(h, root.id);
    assert.equal(p.ok, true);
    assert.equal(p.id, forkId, 'the reply carries the request id');
    assert.equal(p.role, 'parent');
    const [c1, c2] = p.children as [string, string];
    assert.equal(h.engine.show(root.id).state, 'running', 'a fork that is not live resumes the parent before its reply');
    assert.equal(h.engine.show(root.id).selfFork?.children, 2);
    for (const [i, c] of [c1, c2].entries()) {
      // The child's reply carries its parent's request id: the same call, returning in the child.
      assert.deepEqual(h.runtime.repliesTo(c), [
        { v: 1, id: forkId, ok: true, role: 'child', index: i + 1, count: 2, vm: c, parent: root.id },
      ]);
      const info = h.engine.show(c);
      assert.deepEqual(info.selfFork, { policy: POLICY, root: root.id, depth: 1, children: 0 });
      assert.equal(info.labels?.job, 'a');
    }
    const ev = events.find((e) => e.kind === 'forked');
    assert.deepEqual([ev?.vm, ev?.reason, ev?.children], [root.id, 'self-fork', [c1, c2]]);

    // A host with no scheduler cannot spread: refused, nothing made.
    const before = state(h);
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 1, spread: true }));
    assert.match(last(h, root.id).message as string, /^spread: this host has no scheduler/);
    assert.equal(state(h), before);

    // A share of a spread self-fork made here (as the scheduler asks): each child gets its reply from this host.
    const token = spreadToken(root.id, 1, 1, { policy: POLICY, root: root.id, depth: 1, children: 0 }, 'cd'.repeat(8));
    const share = await fork(h, root.id, 1, { resumeParent: true, perChild: [{ env: { FORKY_SELF_FORK: token } }] });
    const s = share.children[0]!;
    // Written once the share's `forked` event is seen, beside the fork's return.
    await h.runtime.waitReplies(s.id, 1);
    assert.deepEqual(h.runtime.repliesTo(s.id), [
      { v: 1, id: 'cd'.repeat(8), ok: true, role: 'child', index: 1, count: 1, vm: s.id, parent: root.id },
    ]);
    assert.deepEqual(h.engine.show(s.id).selfFork, { policy: POLICY, root: root.id, depth: POLICY.maxDepth + 1, children: 0 });

    // An outside fork of a VM with a policy: each child is the root of a tree of its own.
    const outside = await fork(h, root.id, 1, { resumeParent: true });
    const o = outside.children[0]!;
    assert.deepEqual(o.selfFork, { policy: POLICY, root: o.id, depth: 0, children: 0 });
  });

  it('without a policy: FORBIDDEN, and nothing is made', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const before = state(h);
    await h.runtime.guestSends(vm.id, req({ op: 'fork', count: 3 }));
    assert.deepEqual(last(h, vm.id), {
      v: 1,
      id: lastId,
      ok: false,
      code: 'FORBIDDEN',
      message: 'self-fork is off for this VM: boot it with a selfFork policy',
    });
    assert.equal(state(h), before);
  });

  it('maxAlive over the tree: a request past it is refused whole; two at once cannot both take the last place', async (t) => {
    const h = await hostFor(t, FAST);
    const root = await boot(h, { selfFork: POLICY });
    const before = state(h);
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 4 }));
    assert.equal(last(h, root.id).code, 'CAPACITY');
    assert.equal(state(h), before, 'a refused fork changes nothing');
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 2, live: true }));
    const [c1, c2] = last(h, root.id).children as [string, string];
    // Alive 3 of 4: two children ask for one each, at once.
    await Promise.all([h.runtime.guestSends(c1, req({ op: 'fork', count: 1 })), h.runtime.guestSends(c2, req({ op: 'fork', count: 1 }))]);
    const outcomes = [last(h, c1), last(h, c2)].map((r) => (r.ok ? 'ok' : r.code)).sort();
    assert.deepEqual(outcomes, ['CAPACITY', 'ok']);
    assert.equal(aliveInTree(h.engine.list(), root.id), 4);
    // A grandchild is two generations down: past maxDepth 1, whatever the budget.
    const grandchild = h.engine.list().find((v) => v.selfFork?.depth === 2)!;
    await h.runtime.guestSends(grandchild.id, req({ op: 'fork', count: 1 }));
    assert.equal(last(h, grandchild.id).code, 'FORBIDDEN');
  });

  it('the rate: a burst, then RATE_LIMITED (refusals count), then a token again', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    for (let i = 0; i < SELF_FORK_RATE.burst; i++) await h.runtime.guestSends(vm.id, req({ op: 'fork', count: 1 }));
    assert.deepEqual(
      h.runtime.repliesTo(vm.id).map((r) => (r as Reply).code),
      Array<string>(SELF_FORK_RATE.burst).fill('FORBIDDEN'),
    );
    const t0 = performance.now();
    await h.runtime.guestSends(vm.id, req({ op: 'fork', count: 1 }));
    assert.equal(last(h, vm.id).code, 'RATE_LIMITED');
    // The port's next line waits for the next token.
    assert.ok(performance.now() - t0 >= 1000 / SELF_FORK_RATE.perSec - 50);
    await h.runtime.guestSends(vm.id, req({ op: 'fork', count: 1 }));
    assert.equal(last(h, vm.id).code, 'FORBIDDEN');
  });

  it('bad lines: too long, not JSON, not the schema: BAD_REQUEST naming what', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h, { selfFork: POLICY });
    const before = state(h);
    const cases: Array<[string | { tooLong: true }, RegExp]> = [
      [{ tooLong: true }, /at most 4096 bytes/],
      ['{"v":1,"op":"fork"', /one JSON object/],
      [req({ op: 'fork', count: 0 }), /count/],
      [req({ op: 'fork', count: 1, shell: 'rm -rf /' }), /unknown key "shell"/],
    ];
    for (const [line, text] of cases) {
      await h.runtime.guestSends(vm.id, line);
      const r = last(h, vm.id);
      assert.equal(r.code, 'BAD_REQUEST', JSON.stringify(r));
      assert.match(r.message as string, text);
    }
    assert.equal(state(h), before);
  });

  it('results: kept for the parent, --exit-after-result destroys the child, --wait gets all (or their end)', async (t) => {
    const h = await hostFor(t, FAST);
    const root = await boot(h, { selfFork: POLICY });
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 3, live: true }));
    const [c1, c2, c3] = last(h, root.id).children as [string, string, string];
    await h.runtime.guestSends(c1, req({ op: 'result', result: { a: 1 } }));
    assert.deepEqual(last(h, c1), { v: 1, id: lastId, ok: true });
    const big = 'x'.repeat(SELF_FORK_RESULT_MAX);
    await h.runtime.guestSends(c2, req({ op: 'result', result: big }));
    assert.equal(last(h, c2).code, 'BAD_REQUEST', 'a result over the bound is refused');
    await h.runtime.guestSends(c2, req({ op: 'result', result: [2], exit: true }));
    assert.equal(
      h.engine.list().some((v) => v.id === c2),
      false,
      'the child is destroyed once its result is kept',
    );
    assert.equal(h.runtime.repliesTo(c2).length, 2, 'and gets no reply (it is gone)');
    await h.engine.destroy(c3);
    await h.runtime.guestSends(root.id, req({ op: 'wait', timeoutMs: 1000 }));
    assert.deepEqual(last(h, root.id), {
      v: 1,
      id: lastId,
      ok: true,
      results: [
        { vm: c1, index: 1, result: { a: 1 } },
        { vm: c2, index: 2, result: [2] },
        { vm: c3, index: 3, ended: 'destroyed' },
      ],
    });
    // A VM not made by a self-fork has no parent to report to.
    await h.runtime.guestSends(root.id, req({ op: 'result', result: 1 }));
    assert.equal(last(h, root.id).code, 'INVALID_STATE');
  });

  it('--wait ends when the last child ends, and times out by its own deadline', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    await h.runtime.guestSends(root.id, req({ op: 'fork', count: 1, live: true }));
    const [c] = last(h, root.id).children as [string];
    await h.runtime.guestSends(root.id, req({ op: 'wait', timeoutMs: 100 }));
    assert.equal(last(h, root.id).code, 'TIMEOUT');
    const waited = h.runtime.guestSends(root.id, req({ op: 'wait', timeoutMs: 5000 }));
    await h.engine.destroy(c);
    await waited;
    assert.deepEqual(last(h, root.id).results, [{ vm: c, index: 1, ended: 'destroyed' }]);
  });
});

reportDuration('self-fork unit tests');
