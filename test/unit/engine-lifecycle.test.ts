import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ForkyError } from '@forky/base';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { assertVm, boot, fork, hostState, reportDuration, snapsWithFiles, sorted } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';

/**
 * Issue 20, dry run: a resume steps the guest's clock (the control line a child's identity is given
 * by, sent again unchanged with fresh entropy and time), and a cascade delete never destroys the
 * VM the snapshot was taken from.
 */

/** The control lines sent to VM `id` since `mark`, split into their fields, with the deadline each was sent with. */
function controlLines(h: EngineHost, id: string, mark: number): Array<{ fields: string[]; timeoutMs: number }> {
  return h.plan.calls
    .slice(mark)
    .filter((c) => c.call === 'runtime.control' && c.vmId === id)
    .map((c) => ({ fields: String(c.args[1]).split(' '), timeoutMs: c.args[2] as number }));
}

describe('engine: resume steps the clock', { concurrency: true }, () => {
  it("resume gives the VM its own identity again, with fresh entropy and the host's time; pause sends nothing", async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const mark = h.plan.calls.length;
    await h.engine.pause(vm.id);
    assert.deepEqual(controlLines(h, vm.id, mark), [], 'a pause leaves the guest alone');
    const sent: string[][] = [];
    for (let i = 0; i < 2; i++) {
      const at = h.plan.calls.length;
      if (i > 0) await h.engine.pause(vm.id);
      const before = Date.now();
      assert.equal((await h.engine.resume(vm.id)).state, 'running');
      const lines = controlLines(h, vm.id, at);
      assert.equal(lines.length, 1, 'one line per resume');
      const { fields, timeoutMs } = lines[0] as { fields: string[]; timeoutMs: number };
      const [vmId, hostname, mac, entropy, secs, nanos, ...rest] = fields;
      assert.deepEqual([vmId, hostname, mac], [vm.id, vm.id, vm.mac], 'the same id, hostname and MAC');
      assert.deepEqual(rest, [], 'no lease on a user-mode network');
      assert.match(entropy as string, /^[0-9a-f]{128}$/);
      const sentMs = Number(secs) * 1000 + Number(nanos) / 1e6;
      assert.ok(sentMs >= before && sentMs <= Date.now(), `the host's time now (${sentMs}, resumed at ${before})`);
      assert.ok(timeoutMs <= 2000, `a short deadline (${timeoutMs} ms)`);
      sent.push(fields);
    }
    assert.notEqual(sent[0]?.[3], sent[1]?.[3], 'fresh entropy each time');
    assertVm(h, vm.id, 'running');
  });

  for (const [what, error] of [
    ['fails', undefined],
    ['does not answer in time', new ForkyError('TIMEOUT', 'guest control did not answer within 2000 ms')],
    ['answers something else', 'err 5 clock_settime'],
  ] as const) {
    it(`a guest that ${what} is resumed all the same`, async (t) => {
      const h = await hostFor(t);
      const vm = await boot(h);
      await h.engine.pause(vm.id);
      const mark = h.plan.calls.length;
      if (typeof error === 'string') {
        // The dry run answers `ok`: the hostile answer comes from a wrapped control.
        const control = h.runtime.control.bind(h.runtime);
        h.runtime.control = async (...args) => {
          await control(...args);
          return error;
        };
      } else h.plan.fail('runtime.control', error ? { error } : {});
      assert.equal((await h.engine.resume(vm.id)).state, 'running');
      assert.equal(controlLines(h, vm.id, mark).length, 1, 'the line was sent');
      assertVm(h, vm.id, 'running');
      assert.equal((await h.engine.exec({ id: vm.id, cmd: ['true'], timeoutMs: 1000 })).exitCode, 0, 'it is usable');
    });
  }
});

describe('engine: a cascade never destroys the VM a snapshot was taken from', { concurrency: true }, () => {
  it('refuses, naming the VM, and changes nothing; once the VM is gone the children forked from it go with it', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const snap = await h.engine.snapshot({ vm: vm.id, resume: true });
    const children = (await fork(h, snap.id, 2)).children.map((c) => c.id);
    const before = await hostState(h);
    const e = await refused(h.engine.deleteSnapshot(snap.id, true));
    assert.equal(e.code, 'CONFLICT');
    assert.ok(e.message.includes(vm.id) && /destroy VM \S+ first/.test(e.message), e.message);
    assert.deepEqual(e.details, { vms: [vm.id], snapshots: [] });
    assert.deepEqual(await hostState(h), before, 'nothing is destroyed');
    assertVm(h, vm.id, 'running');

    const plain = await refused(h.engine.deleteSnapshot(snap.id));
    assert.doesNotMatch(plain.message, /cascade/, 'without cascade it does not suggest one that would be refused');

    await h.engine.destroy(vm.id);
    const out = await h.engine.deleteSnapshot(snap.id, true);
    assert.deepEqual(sorted(out.vms), sorted(children), 'the children forked from it go, as before');
    assert.deepEqual(out.snapshots, [snap.id]);
    assert.deepEqual(h.engine.list(), []);
    assert.deepEqual(await h.files(), [], 'no file is left');
  });

  it("refuses for an earlier snapshot too: the VM's later snapshots run through it", async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const s1 = await h.engine.snapshot({ vm: vm.id, resume: true });
    const s2 = await h.engine.snapshot({ vm: vm.id, resume: true });
    const before = await hostState(h);
    for (const s of [s1, s2]) {
      const e = await refused(h.engine.deleteSnapshot(s.id, true));
      assert.equal(e.code, 'CONFLICT');
      assert.deepEqual(e.details?.vms, [vm.id]);
    }
    assert.deepEqual(await hostState(h), before);
  });

  it('a child the snapshot below was taken from goes with the snapshot it was forked from', async (t) => {
    const h = await hostFor(t);
    const src = await boot(h);
    const snap = await h.engine.snapshot({ vm: src.id, resume: true });
    const c = (await fork(h, snap.id, 1)).children[0]?.id as string;
    const below = await h.engine.snapshot({ vm: c, resume: true });
    const e = await refused(h.engine.deleteSnapshot(below.id, true));
    assert.deepEqual(e.details?.vms, [c], "the child's own snapshot keeps it");
    await h.engine.destroy(src.id);
    const out = await h.engine.deleteSnapshot(snap.id, true);
    assert.deepEqual(out, { vms: [c], snapshots: [below.id, snap.id] });
    assert.deepEqual(await snapsWithFiles(h), []);
  });

  it('deletes a snapshot its VM no longer runs on (its chain flattened since) and leaves the VM running', async (t) => {
    // Depth 2: each snapshot flattens the VM's chain at once, so it runs only on its latest.
    const h = await hostFor(t, { limits: { maxChainDepth: 2 } });
    const vm = await boot(h);
    const s1 = await h.engine.snapshot({ vm: vm.id, resume: true });
    await h.engine.snapshot({ vm: vm.id, resume: true });
    assert.deepEqual(await h.engine.deleteSnapshot(s1.id, true), { vms: [], snapshots: [s1.id] });
    assertVm(h, vm.id, 'running');
  });
});

reportDuration('engine lifecycle (issue 20)');
