import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ValidationError } from '@forky/base';
import {
  BatchRequest,
  BootRequest,
  ForkRequest,
  Labels,
  SchedForkRequest,
  VmListRequest,
  parseOrThrow,
  snapshotMatches,
  vmMatches,
  type SnapshotInfo,
  type VmInfo,
} from '@forky/contract';

/** The field a refusal names, or fails the test if `fn` does not throw a BAD_REQUEST. */
function refusedField(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ValidationError, String(e));
    assert.equal(e.code, 'BAD_REQUEST');
    return String(e.details?.field);
  }
  assert.fail('not refused');
}

const SRC = 'vm-abcdefghijkm';

describe('labels and names in the contract', () => {
  it('takes names and labels on a boot', () => {
    const r = BootRequest.parse({ name: 'web-1', labels: { team: 'a', 'app.kubernetes.io/part': 'x y' } });
    assert.equal(r.name, 'web-1');
    assert.deepEqual(r.labels, { team: 'a', 'app.kubernetes.io/part': 'x y' });
  });

  it('refuses a bad name, label key or value, naming the field', () => {
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { name: 'Web' }, 'boot')),
      'name',
    );
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { name: 'a.b' }, 'boot')),
      'name',
    );
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { name: 'a'.repeat(64) }, 'boot')),
      'name',
    );
    assert.match(
      refusedField(() => parseOrThrow(BootRequest, { labels: { Team: 'a' } }, 'boot')),
      /^labels/,
    );
    assert.match(
      refusedField(() => parseOrThrow(BootRequest, { labels: { '-a': 'a' } }, 'boot')),
      /^labels/,
    );
    assert.match(
      refusedField(() => parseOrThrow(BootRequest, { labels: { ['k'.repeat(64)]: 'a' } }, 'boot')),
      /^labels/,
    );
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { labels: { a: 'x'.repeat(257) } }, 'boot')),
      'labels.a',
    );
    for (const bad of ['line\nbreak', 'tab\there', 'bidi\u202e', 'nul\u0000'])
      assert.equal(
        refusedField(() => parseOrThrow(BootRequest, { labels: { a: bad } }, 'boot')),
        'labels.a',
      );
    assert.doesNotThrow(() => Labels.parse({ a: 'x'.repeat(256), b: '', c: 'ünïcode ok' }));
  });

  it('refuses more than 32 labels', () => {
    const many = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { labels: many }, 'boot')),
      'labels',
    );
    delete many.k32;
    assert.doesNotThrow(() => BootRequest.parse({ labels: many }));
  });

  it('refuses labels over 2 KiB in all (they ride in every heartbeat), naming labels', () => {
    const big = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, 'x'.repeat(250)]));
    assert.equal(
      refusedField(() => parseOrThrow(BootRequest, { labels: big }, 'boot')),
      'labels',
    );
    delete big.k8;
    assert.doesNotThrow(() => BootRequest.parse({ labels: big }));
  });

  it('refuses perChild whose length is not count, on every fork schema', () => {
    const req = { source: SRC, count: 3, perChild: [{ labels: { i: '0' } }, {}] };
    assert.equal(
      refusedField(() => parseOrThrow(ForkRequest, req, 'fork')),
      'perChild',
    );
    assert.equal(
      refusedField(() => parseOrThrow(SchedForkRequest, req, 'fork')),
      'perChild',
    );
    assert.equal(
      refusedField(() => parseOrThrow(BatchRequest, { items: [req] }, 'batch')),
      'items.0.perChild',
    );
    const ok = ForkRequest.parse({ ...req, perChild: [...req.perChild, { env: { SEED: '3' } }], labels: { run: 'r1' } });
    assert.equal(ok.perChild?.length, 3);
    assert.doesNotThrow(() => BatchRequest.parse({ items: [{ ...req, count: 2 }] }));
  });

  it('refuses a bad child env, naming the field', () => {
    const fork = (env: Record<string, string>) => parseOrThrow(ForkRequest, { source: SRC, count: 1, perChild: [{ env }] }, 'fork');
    assert.match(
      refusedField(() => fork({ '1A': 'x' })),
      /^perChild\.0\.env/,
    );
    assert.match(
      refusedField(() => fork({ 'A-B': 'x' })),
      /^perChild\.0\.env/,
    );
    assert.equal(
      refusedField(() => fork({ A: 'two\nlines' })),
      'perChild.0.env.A',
    );
    assert.equal(
      refusedField(() => fork({ A: 'x'.repeat(4097) })),
      'perChild.0.env.A',
    );
    assert.equal(
      refusedField(() => fork(Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`E${i}`, ''])))),
      'perChild.0.env',
    );
    assert.doesNotThrow(() => fork({ _A1: 'a=b c', B: '' }));
  });

  it('refuses unknown or bad list filters', () => {
    assert.equal(
      refusedField(() => parseOrThrow(VmListRequest, { state: ['runing'] }, 'vm.list')),
      'state.0',
    );
    assert.equal(
      refusedField(() => parseOrThrow(VmListRequest, { state: [] }, 'vm.list')),
      'state',
    );
    assert.equal(
      refusedField(() => parseOrThrow(VmListRequest, { parent: 'vm-abcdefghijkm' }, 'vm.list')),
      'parent',
    );
    assert.equal(
      refusedField(() => parseOrThrow(VmListRequest, { label: {} }, 'vm.list')),
      '(body)',
    );
    assert.deepEqual(VmListRequest.parse({}), {});
  });
});

describe('list filters', () => {
  const vm = (o: Partial<VmInfo>): VmInfo =>
    ({
      id: 'vm-aaaaaaaaaaaa',
      host: 'h',
      state: 'running',
      image: 'tiny',
      memMiB: 256,
      cpus: 1,
      accel: 'tcg',
      createdAt: '',
      ...o,
    }) as VmInfo;

  it('matches every label given, one of the states, the image and the parent', () => {
    const v = vm({ labels: { a: '1', b: '2' }, parentSnapshot: 'snap-aaaaaaaaaaaa' });
    assert.ok(vmMatches(v, {}));
    assert.ok(vmMatches(v, { labels: { a: '1' }, state: ['paused', 'running'], image: 'tiny', parent: 'snap-aaaaaaaaaaaa' }));
    assert.ok(!vmMatches(v, { labels: { a: '1', c: '3' } }));
    assert.ok(!vmMatches(v, { labels: { a: '2' } }));
    assert.ok(!vmMatches(v, { labels: { b: '' } }));
    assert.ok(!vmMatches(vm({}), { labels: { a: '1' } }));
    assert.ok(!vmMatches(v, { state: ['paused'] }));
    assert.ok(!vmMatches(v, { image: 'debian' }));
    assert.ok(!vmMatches(v, { parent: 'snap-bbbbbbbbbbbb' }));
    // A label named like an Object.prototype member is not "had" by a VM without it.
    assert.ok(!vmMatches(vm({ labels: {} }), { labels: { constructor: '' } }));
  });

  it('matches snapshots by labels, VM and image', () => {
    const s = { id: 'snap-aaaaaaaaaaaa', vm: SRC, image: 'tiny', labels: { a: '1' } } as unknown as SnapshotInfo;
    assert.ok(snapshotMatches(s, { labels: { a: '1' }, vm: SRC, image: 'tiny' }));
    assert.ok(!snapshotMatches(s, { vm: 'vm-bbbbbbbbbbbb' }));
    assert.ok(!snapshotMatches(s, { labels: { a: '2' } }));
  });
});
