import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ForkyError, silentLogger } from '@forky/base';

import { RamAdmission, ramNeed, type RamFile, type RamNeed, type RamSpace } from '@forky/hostd/internal';

/** A VM as admission weighs it. */
interface VmRam {
  id: string;
  memMiB: number;
  ram: { file: string; shared: boolean };
}

const MiB = 2 ** 20;

/** A tmpfs of `sizeMiB`: files with what they really take; `outside` is taken by others. */
class FakeRamSpace implements RamSpace {
  readonly dir = '/fake/ram';
  readonly allocated = new Map<string, number>();
  outsideMiB = 0;
  reclaims = 0;
  reclaimFails = false;
  constructor(readonly sizeMiB: number) {}
  async freeBytes(): Promise<number> {
    const used = [...this.allocated.values()].reduce((a, b) => a + b, 0) + this.outsideMiB * MiB;
    return Math.max(0, this.sizeMiB * MiB - used);
  }
  async allocatedBytes(file: string): Promise<number> {
    return this.allocated.get(file) ?? 0;
  }
  async reclaim(file: string): Promise<number> {
    this.reclaims++;
    await new Promise<void>((r) => setImmediate(r));
    if (this.reclaimFails) throw new Error('fallocate failed');
    const before = this.allocated.get(file) ?? 0;
    this.allocated.set(file, Math.min(before, 100 * MiB));
    return before - (this.allocated.get(file) ?? 0);
  }
}

/** A host: the RAM files its records point at, and admission over a fake space. */
function host(sizeMiB: number) {
  const space = new FakeRamSpace(sizeMiB);
  const files: RamFile[] = [];
  const adm = new RamAdmission(space, 'h1', () => files, silentLogger());
  /** A file of the records, `allocMiB` of its `nominalMiB` really taken. */
  const add = (file: string, nominalMiB: number, allocMiB: number): void => {
    files.push({ file, nominalBytes: nominalMiB * MiB });
    space.allocated.set(file, allocMiB * MiB);
  };
  const admit = (need: RamNeed, field: string): Promise<void> => adm.during((hold) => hold.admit(need, field));
  return { space, files, adm, add, admit };
}

async function capacity(p: Promise<unknown>): Promise<ForkyError> {
  const e = await p.then(
    () => assert.fail('admitted'),
    (err: unknown) => err,
  );
  assert.ok(e instanceof ForkyError && e.code === 'CAPACITY', String(e));
  return e;
}

const vm = (id: string, shared: boolean, memMiB = 256): VmRam => ({
  id,
  memMiB,
  ram: { file: `/fake/ram/${shared ? 'vms' : 'snapshots'}/${id}.ram`, shared },
});

describe('RAM directory admission (fake tmpfs)', () => {
  it('admits a boot that fits and refuses one that does not, saying how much is needed and free', async () => {
    const h = host(400);
    await h.admit(ramNeed.boot('/fake/ram/vms/a.ram', 256), 'memMiB');
    h.add('/fake/ram/vms/a.ram', 256, 121);
    // 279 MiB are free on the filesystem, but VM a's file may still take 135 of them.
    const e = await capacity(h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 256), 'memMiB'));
    assert.deepEqual(e.details, { field: 'memMiB', needMiB: 256, freeMiB: 144, dir: '/fake/ram', fsFreeMiB: 279, heldMiB: 135 });
    assert.match(e.message, /needs 256 MiB, 144 MiB are free/);
    await h.admit(ramNeed.boot('/fake/ram/vms/c.ram', 128), 'memMiB');
  });

  it('keeps what a running request admitted until it ends, so two requests never share free space', async () => {
    const h = host(400);
    let finish = (): void => undefined;
    const first = h.adm.during(async (hold) => {
      await hold.admit(ramNeed.boot('/fake/ram/vms/a.ram', 256), 'memMiB');
      await new Promise<void>((r) => (finish = r));
    });
    await new Promise<void>((r) => setImmediate(r));
    const e = await capacity(h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 256), 'memMiB'));
    assert.equal(e.details?.freeMiB, 144);
    finish();
    await first;
    // It ended without making its file (a failed boot): its room is free again.
    await h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 256), 'memMiB');
  });

  it('counts a file once when it is both held and in the records', async () => {
    const h = host(400);
    await h.adm.during(async (hold) => {
      await hold.admit(ramNeed.boot('/fake/ram/vms/a.ram', 256), 'memMiB');
      h.add('/fake/ram/vms/a.ram', 256, 10);
      // Another request sees a's 256 MiB once (10 taken, 246 held): 144 free.
      const e = await capacity(h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 200), 'memMiB'));
      assert.equal(e.details?.freeMiB, 144);
      await h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 144), 'memMiB');
    });
  });

  it('a refused request holds nothing and changes nothing', async () => {
    const h = host(300);
    await capacity(h.admit(ramNeed.boot('/fake/ram/vms/a.ram', 512), 'memMiB'));
    await h.admit(ramNeed.boot('/fake/ram/vms/b.ram', 300), 'memMiB');
    assert.equal(h.files.length, 0);
    assert.equal(h.space.allocated.size, 0);
  });

  it('a snapshot of a VM that owns its RAM needs nothing new; of a child, a copy the size of its guest', async () => {
    const h = host(400);
    const a = vm('a', true);
    h.add(a.ram.file, 256, 200);
    h.space.outsideMiB = 200; // the filesystem is full
    await h.admit(ramNeed.snapshot(a, '/fake/ram/snapshots/s1.ram'), 'vm');
    const h2 = host(400);
    const c = vm('s0', false);
    h2.add(c.ram.file, 256, 120);
    // 280 free, the frozen file may take 136 more: 144 for a copy that its children may fill to 256.
    const e = await capacity(h2.admit(ramNeed.snapshot(c, '/fake/ram/snapshots/s2.ram'), 'vm'));
    assert.deepEqual([e.details?.field, e.details?.needMiB, e.details?.freeMiB], ['vm', 256, 144]);
  });

  it('a fork needs what its children may still add to the RAM file they map', async () => {
    const h = host(400);
    h.add('/fake/ram/snapshots/s.ram', 256, 120);
    const need = ramNeed.forkSnapshot({ id: 's', profile: { memMiB: 256 } }, '/fake/ram/snapshots/s.ram');
    await h.admit(need, 'source');
    // Someone else fills the filesystem: the children could no longer fault their pages in.
    h.space.outsideMiB = 200;
    const e = await capacity(h.admit(need, 'source'));
    assert.deepEqual([e.details?.field, e.details?.needMiB, e.details?.freeMiB], ['source', 136, 80]);
    // A file already at its guest's size can take no more: nothing to admit.
    h.space.allocated.set('/fake/ram/snapshots/s.ram', 256 * MiB);
    h.space.outsideMiB = 144;
    await h.admit(need, 'source');
    // A fork of a child VM copies the file it maps first, not yet named.
    const e2 = await capacity(h.admit(ramNeed.forkVm(vm('c', false)), 'source'));
    assert.equal(e2.details?.needMiB, 256);
  });

  it('reclaims a file once per burst of calls, and a failure to reclaim fails nothing', async () => {
    const h = host(400);
    h.add('/fake/ram/snapshots/s.ram', 256, 240);
    await Promise.all(Array.from({ length: 8 }, () => h.adm.reclaim('/fake/ram/snapshots/s.ram')));
    assert.ok(h.space.reclaims >= 1 && h.space.reclaims <= 2, `${h.space.reclaims} passes for 8 calls`);
    assert.equal(await h.space.allocatedBytes('/fake/ram/snapshots/s.ram'), 100 * MiB);
    h.space.reclaimFails = true;
    await h.adm.reclaim('/fake/ram/snapshots/s.ram');
  });
});
