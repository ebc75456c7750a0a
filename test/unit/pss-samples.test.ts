import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PSS_MAX_AGE_MS, PSS_REFRESH_PER_REPORT, PssSamples } from '@forky/hostd/internal';

/** A Pss reader that counts its reads: pid p costs p MiB, plus `bump` once bumped. */
function reader() {
  const reads: number[] = [];
  let bump = 0;
  return {
    reads,
    bump: (n: number) => (bump = n),
    read: async (pid: number) => (reads.push(pid), pid + bump),
  };
}

const vms = (n: number) => Array.from({ length: n }, (_, i) => ({ pid: 1000 + i, parentSnapshot: i > 0 ? 'snap-x' : undefined }));

describe("VMs' Pss for heartbeats: read once, refreshed a few per report", () => {
  it('a VM never sampled is read at once; a fresh sample is not read again', async () => {
    const s = new PssSamples();
    const r = reader();
    const t0 = 1_000_000;
    const first = await s.of(vms(100), r.read, t0);
    assert.equal(r.reads.length, 100, 'every VM read once');
    assert.deepEqual(first[1], { child: true, mib: 1001 });
    assert.deepEqual(first[0], { child: false, mib: 1000 });
    await s.of(vms(100), r.read, t0 + PSS_MAX_AGE_MS - 1);
    assert.equal(r.reads.length, 100, 'no read within the sample age');
  });

  it('stale samples are read again a few per report, oldest first, and the rest keep their last value', async () => {
    const s = new PssSamples();
    const r = reader();
    const t0 = 1_000_000;
    await s.of(vms(20), r.read, t0);
    r.reads.length = 0;
    r.bump(5);
    const later = await s.of(vms(20), r.read, t0 + PSS_MAX_AGE_MS);
    assert.equal(r.reads.length, PSS_REFRESH_PER_REPORT);
    assert.equal(later.filter((p, i) => p.mib === 1000 + i + 5).length, PSS_REFRESH_PER_REPORT, 'the refreshed ones show the new value');
    assert.equal(later.filter((p, i) => p.mib === 1000 + i).length, 20 - PSS_REFRESH_PER_REPORT, 'the others their last');
    r.reads.length = 0;
    await s.of(vms(20), r.read, t0 + PSS_MAX_AGE_MS + 1);
    assert.equal(r.reads.length, PSS_REFRESH_PER_REPORT, 'the next report takes the next oldest');
    assert.ok(
      r.reads.every((pid) => !later.some((p, i) => 1000 + i === pid && p.mib === pid + 5)),
      'not those just refreshed',
    );
  });

  it('a VM gone is forgotten, and one without a process counts 0', async () => {
    const s = new PssSamples();
    const r = reader();
    await s.of(vms(3), r.read, 0);
    const after = await s.of([{ pid: 1000 }, { pid: undefined }], r.read, 1);
    assert.deepEqual(after, [
      { child: false, mib: 1000 },
      { child: false, mib: 0 },
    ]);
    // 1001 and 1002 were dropped: back again, they are read as new.
    r.reads.length = 0;
    await s.of(vms(3), r.read, 2);
    assert.deepEqual(r.reads.sort(), [1001, 1002]);
  });
});
