import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { IncompatibleError } from '@forky/base';
import { DEVICE_SET, type MachineProfile, type SelfForkPolicy } from '@forky/contract';
import { checkProfile, spreadToken } from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { DryRunRuntime } from '../helpers/hostd-internals.js';
import { boot, fork } from '../helpers/engine-checks.js';

/** Review R1 of the self-fork mends: items 2 (results per VM), 5 (buckets dropped), 3 and 9 (device set). */
const POLICY: SelfForkPolicy = { maxChildren: 40, maxDepth: 1, maxAlive: 41 };
let seq = 0xa00;
const req = (o: Record<string, unknown>): [string, string] => {
  const id = (++seq).toString(16).padStart(16, '0');
  return [JSON.stringify({ v: 1, id, ...o }), id];
};
type Reply = { id?: string; ok: boolean; code?: string; message?: string; children?: string[] };
const replies = (h: EngineHost, id: string): Reply[] => h.runtime.repliesTo(id) as Reply[];
const outcome = (r: Reply | undefined): string => (r === undefined ? 'none' : r.ok ? 'ok' : (r.code ?? '?'));
/** Sends `n` lines that are no request (each spends its tree's token) from `vm`, one after another: their outcomes. */
async function badLines(h: EngineHost, vm: string, n: number): Promise<string[]> {
  const from = replies(h, vm).length;
  for (let i = 0; i < n; i++) await h.runtime.guestSends(vm, 'x');
  return replies(h, vm)
    .slice(from)
    .map((r) => outcome(r));
}

describe('self-fork review R1', () => {
  it('#2: 30 children of one fork each send their result at once: all kept; a VM past its own burst is refused', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    const [f] = req({ op: 'fork', count: 30, live: true });
    await h.runtime.guestSends(root.id, f);
    const kids = replies(h, root.id).at(-1)!.children!;
    assert.equal(kids.length, 30);
    const sent = kids.map((k) => [k, ...req({ op: 'result', result: 'done' })] as const);
    await Promise.all(sent.map(([k, l]) => h.runtime.guestSends(k, l)));
    const codes = sent.map(([k, , id]) => outcome(replies(h, k).find((r) => r.id === id)));
    assert.deepEqual(codes, Array<string>(30).fill('ok'));
    // Not the tree's tokens either: the root forks still (one fork spent one of 20).
    const [again] = req({ op: 'fork', count: 1, live: true });
    await h.runtime.guestSends(root.id, again);
    assert.equal(outcome(replies(h, root.id).at(-1)), 'ok');
    // Per VM (burst 4, one spent, 2 a second back): of one child's 6 more results at once, the first 3
    // pass the rate (refused as no longer waited for: its parent forked again), and later ones do not.
    const one = kids[0]!;
    for (let i = 0; i < 6; i++) await h.runtime.guestSends(one, req({ op: 'result', result: i })[0]);
    const got = replies(h, one).slice(-6);
    assert.deepEqual(
      got.slice(0, 3).map((r) => r.code),
      ['INVALID_STATE', 'INVALID_STATE', 'INVALID_STATE'],
    );
    const limited = got.find((r) => r.code === 'RATE_LIMITED');
    assert.match(limited?.message ?? '', /result and wait requests a second from this VM/);
  });

  // A slow tree rate (1 a second, burst 5): a drained bucket cannot refill while the test runs on.
  const SLOW = { limits: { selfForkRate: { perSec: 1, burst: 5 } } };
  /** A VM of tree `root` (which need not be here) made from `source`, as a spread fork's share makes one. */
  const ofTree = async (h: EngineHost, source: string, root: string): Promise<string> => {
    const token = spreadToken(root, 1, 1, { policy: POLICY, root, depth: 1, children: 0 }, 'ab'.repeat(8));
    return (await fork(h, source, 1, { resumeParent: true, perChild: [{ env: { FORKY_SELF_FORK: token } }] })).children[0]!.id;
  };

  it('#5: a tree’s bucket stays while a VM of it is here, and goes with the last, its root gone first or never here', async (t) => {
    const h = await hostFor(t, SLOW);
    const root = await boot(h, { selfFork: POLICY });
    const other = await boot(h);
    const [f] = req({ op: 'fork', count: 1, live: true });
    await h.runtime.guestSends(root.id, f);
    const [child] = replies(h, root.id).at(-1)!.children!;
    assert.deepEqual(await badLines(h, root.id, 4), Array<string>(4).fill('BAD_REQUEST'), 'the burst spent');
    await h.engine.destroy(root.id);
    assert.deepEqual(await badLines(h, child!, 1), ['RATE_LIMITED'], 'its child is here: the bucket stays');
    await h.engine.destroy(child!);
    // The tree's last VM went: one of it made here later starts with a full bucket.
    const late = await ofTree(h, other.id, root.id);
    assert.deepEqual(await badLines(h, late, 5), Array<string>(5).fill('BAD_REQUEST'));
    // A tree whose root never lived here: its bucket goes with its last VM here too.
    const remote = 'vm-remote000root';
    const first = await ofTree(h, other.id, remote);
    assert.deepEqual(await badLines(h, first, 5), Array<string>(5).fill('BAD_REQUEST'));
    await h.engine.destroy(first);
    const next = await ofTree(h, other.id, remote);
    assert.deepEqual(await badLines(h, next, 5), Array<string>(5).fill('BAD_REQUEST'));
  });

  const vmFile = (h: EngineHost, id: string): string => path.join(h.dataDir, 'vms', id, 'vm.json');

  it('#3: a snapshot says the device set of the VM’s own process, kept across a restart; one an older hostd started says none', async (t) => {
    const h = await hostFor(t);
    const booted = await boot(h);
    const child = (await fork(h, booted.id, 1, { resumeParent: true })).children[0]!.id;
    const old = await boot(h);
    // Stands in for a VM whose QEMU an older hostd started (its record has no device set).
    const rec = JSON.parse(await fs.readFile(vmFile(h, old.id), 'utf8')) as { devices?: number };
    assert.equal(rec.devices, DEVICE_SET, 'recorded at boot');
    delete rec.devices;
    await fs.writeFile(vmFile(h, old.id), JSON.stringify(rec));
    const h2 = await h.restart();
    t.after(() => h2.close());
    for (const id of [booted.id, child]) {
      const s = await h2.engine.snapshot({ vm: id, resume: true });
      assert.equal(s.profile.devices, DEVICE_SET, `${id}: kept across recovery`);
    }
    const s = await h2.engine.snapshot({ vm: old.id, resume: true });
    assert.equal(s.profile.devices, undefined, 'not this hostd’s device set');
    await assert.rejects(
      fork(h2, s.id, 1),
      (e: unknown) => e instanceof IncompatibleError && /devices is 1 in the snapshot, 2 here: .*older hostd.*re-create/.test(e.message),
    );
    assert.equal(h2.engine.show(old.id).state, 'running', 'the VM itself runs on');
  });

  it('#9: profiles compare normalised: an absent device set is set 1 on either side; a newer one is no “older hostd”', () => {
    const here = new DryRunRuntime().profile(64, 1, 'img');
    const { devices: _, ...unversioned } = here;
    const view = (p: MachineProfile) =>
      ({ hostId: 'h-test', runtime: { profile: () => p } }) as unknown as Parameters<typeof checkProfile>[0];
    // A host whose profile says no device set (set 1) takes a snapshot that says 1, and one that says none.
    assert.doesNotThrow(() => checkProfile(view(unversioned), { ...here, devices: 1 }, { id: 'img' }));
    assert.doesNotThrow(() => checkProfile(view(unversioned), unversioned, { id: 'img' }));
    assert.throws(
      () => checkProfile(view(here), { ...here, devices: DEVICE_SET + 1 }, { id: 'img' }),
      (e: unknown) => e instanceof IncompatibleError && /devices is 3 in the snapshot, 2 here$/.test(e.message),
    );
  });
});
