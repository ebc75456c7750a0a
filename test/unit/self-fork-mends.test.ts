import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { IncompatibleError, pollUntil, silentLogger, withDeadline } from '@forky/base';
import { DEVICE_SET, MachineProfile, type SelfForkPolicy, type VmEvent } from '@forky/contract';
import { ForkPort, ForkPorts, SELF_FORK_RATE, SelfForkResults, checkProfile, spreadToken, type SelfForkLine } from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { DryRunRuntime } from '../helpers/hostd-internals.js';
import { boot, fork, reportDuration } from '../helpers/engine-checks.js';

const POLICY: SelfForkPolicy = { maxChildren: 10, maxDepth: 1, maxAlive: 6 };
let seq = 0x900;
const req = (o: Record<string, unknown>): [string, string] => {
  const id = (++seq).toString(16).padStart(16, '0');
  return [JSON.stringify({ v: 1, id, ...o }), id];
};
type Reply = { id?: string; ok: boolean; code?: string; message?: string; children?: string[] };
const replies = (h: EngineHost, id: string): Reply[] => h.runtime.repliesTo(id) as Reply[];
const onDisk = async (h: EngineHost, id: string): Promise<{ state?: string; selfFork?: { pausedBy?: string } }> =>
  JSON.parse(await fs.readFile(path.join(h.dataDir, 'vms', id, 'vm.json'), 'utf8')) as { state?: string };

describe('self-fork mends (review R3: 6, 9, 11, 13, 14, 15, 16, close, device set)', () => {
  it('6: a parent paused by a self-fork whose hostd restarted mid-fork is resumed by recovery, its mark cleared', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    // Stands in for a hostd that stopped mid-fork: the second child's load never returns.
    h.plan.fail('runtime.load', { nth: 2, where: (c) => c.vmId !== root.id, gate: new Promise<void>(() => undefined) });
    const [f, forkId] = req({ op: 'fork', count: 2 });
    void h.runtime.guestSends(root.id, f);
    await pollUntil(async () => (h.plan.armed === 0 && h.engine.show(root.id).state === 'paused' ? true : undefined), {
      timeoutMs: 2000,
      what: 'the parent paused, a child at load',
    });
    assert.equal((await onDisk(h, root.id)).selfFork?.pausedBy, forkId, 'marked (saved) before the pause');
    const h2 = await h.restart();
    t.after(() => h2.close());
    assert.equal(h2.engine.show(root.id).state, 'running', 'resumed by recovery');
    assert.equal((await onDisk(h2, root.id)).selfFork?.pausedBy, undefined, 'the mark is cleared');
  });

  it('6: a parent paused from outside (no mark) stays paused across a restart', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    await h.engine.pause(root.id);
    const h2 = await h.restart();
    t.after(() => h2.close());
    assert.equal(h2.engine.show(root.id).state, 'paused');
  });

  it('9: --wait after a --spread fork is refused by name (no subset of the results)', async () => {
    const r = new SelfForkResults(() => 'running');
    r.forked('vm-parent000001', [{ vm: 'vm-child0000001', index: 1 }], true);
    await assert.rejects(r.wait('vm-parent000001', 50), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'INVALID_STATE');
      assert.match(e.message, /--wait after a --spread self-fork is not supported/);
      return true;
    });
  });

  it('14: the rate is per tree: a child spends its root’s tokens', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    const [f] = req({ op: 'fork', count: 1, live: true });
    await h.runtime.guestSends(root.id, f);
    const [child] = replies(h, root.id).at(-1)!.children!;
    // The burst: the fork took one, bad lines of the root (refused, still counted) all but one more, then the child one.
    for (let i = 0; i < SELF_FORK_RATE.burst - 2; i++) await h.runtime.guestSends(root.id, 'x');
    await h.runtime.guestSends(child!, 'x');
    await h.runtime.guestSends(child!, 'x');
    assert.deepEqual(
      replies(h, child!)
        .slice(1)
        .map((r) => r.code),
      ['BAD_REQUEST', 'RATE_LIMITED'],
    );
    assert.match(replies(h, child!).at(-1)!.message!, new RegExp(`in the tree of ${root.id}`));
  });

  it('15, 16: a spread share says reason self-fork; an outside copy of a self-fork child loses /run/forky/fork', async (t) => {
    const events: VmEvent[] = [];
    const h = await hostFor(t, { events: { publish: (e) => events.push(e) } });
    const root = await boot(h, { selfFork: POLICY });
    const token = spreadToken(root.id, 1, 1, { policy: POLICY, root: root.id, depth: 1, children: 0 }, 'ab'.repeat(8));
    const share = await fork(h, root.id, 1, { resumeParent: true, perChild: [{ env: { FORKY_SELF_FORK: token } }] });
    const ev = events.find((e) => e.kind === 'forked' && e.children?.includes(share.children[0]!.id));
    assert.equal(ev?.reason, 'self-fork');
    const outside = await fork(h, root.id, 1, { resumeParent: true });
    assert.equal(events.find((e) => e.kind === 'forked' && e.children?.includes(outside.children[0]!.id))?.reason, undefined);

    const [f] = req({ op: 'fork', count: 1, live: true });
    await h.runtime.guestSends(root.id, f);
    const [child] = replies(h, root.id).at(-1)!.children!;
    const from = h.plan.calls.length;
    const copy = (await fork(h, child!, 1, { resumeParent: true })).children[0]!;
    const rm = (id: string) => (c: { vmId?: string; args: readonly unknown[] }) =>
      c.vmId === id && JSON.stringify(c.args).includes('rm -f /run/forky/fork');
    await pollUntil(async () => (h.plan.count('runtime.exec', from, rm(copy.id)) === 1 ? true : undefined), {
      timeoutMs: 2000,
      what: 'the copy’s /run/forky/fork removed',
    });
    assert.equal(h.plan.count('runtime.exec', from, rm(child!)), 0, 'the source keeps its own');
  });

  it('close(): a pending --wait ends and its timer goes; nothing is written after', async (t) => {
    const h = await hostFor(t);
    const root = await boot(h, { selfFork: POLICY });
    const [f] = req({ op: 'fork', count: 1, live: true });
    await h.runtime.guestSends(root.id, f);
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const [w] = req({ op: 'wait', timeoutMs: 3_600_000 });
    const waited = h.runtime.guestSends(root.id, w);
    await pollUntil(async () => (timers() > before ? true : undefined), { timeoutMs: 2000, what: 'the wait’s timer' });
    const written = replies(h, root.id).length;
    await h.engine.close();
    await withDeadline(waited, 2000, 'the wait ending at close');
    assert.equal(timers(), before, 'no timer left');
    assert.equal(replies(h, root.id).length, written, 'no reply written once closed');
  });

  it('device set: a snapshot profile without `devices`, or with another, is INCOMPATIBLE naming it; old ones parse', () => {
    const runtime = new DryRunRuntime();
    const here = runtime.profile(64, 1, 'img');
    assert.equal(here.devices, DEVICE_SET);
    const { devices: _, ...old } = here;
    assert.deepEqual(MachineProfile.parse(old), old, 'an older snapshot’s profile parses');
    const view = { hostId: 'h-test', runtime } as unknown as Parameters<typeof checkProfile>[0];
    assert.doesNotThrow(() => checkProfile(view, here, { id: 'img' }));
    for (const [p, said] of [
      [old, /devices is 1 in the snapshot, 2 here: the snapshot was made by an older hostd .*re-create/],
      [{ ...here, devices: 1 }, /devices is 1 in the snapshot, 2 here/],
    ] as const) {
      assert.throws(
        () => checkProfile(view, p, { id: 'img' }),
        (e: unknown) => e instanceof IncompatibleError && said.test(e.message) && JSON.stringify(e.details) === '{"fields":["devices"]}',
      );
    }
  });
});

describe('self-fork port mends (11: BUSY, 13: reattach retries)', () => {
  async function portPair(t: import('node:test').TestContext, deliver: (l: SelfForkLine) => Promise<void>) {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-busy-'));
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    const sockPath = path.join(dir, 'fork.sock');
    let guest!: net.Socket;
    const got = new Promise<net.Socket>((resolve) => {
      const server = net.createServer((c) => resolve((guest = c)));
      server.listen(sockPath);
      t.after(async () => {
        port.close();
        guest?.destroy();
        await new Promise<void>((r) => server.close(() => r()));
      });
    });
    const port = await ForkPort.connect(sockPath, deliver, silentLogger(), 2000);
    await got;
    let heard = '';
    guest.on('data', (d: Buffer) => (heard += d.toString('utf8')));
    return { guest, heard: () => heard, port };
  }

  it('a line while one is carried out is delivered at once (its handler answers BUSY), not after', async (t) => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const seen: string[] = [];
    const { guest } = await portPair(t, async (l) => {
      seen.push('line' in l ? l.line : 'tooLong');
      if (seen.length === 1) await gate;
    });
    guest.write('first\n');
    await pollUntil(async () => (seen.length === 1 ? true : undefined), { timeoutMs: 2000, what: 'the first line' });
    guest.write('second\n');
    await pollUntil(async () => (seen.length === 2 ? true : undefined), {
      timeoutMs: 2000,
      what: 'the second line while the first is held',
    });
    release();
    assert.deepEqual(seen, ['first', 'second']);
  });

  it('lines past the queue bound get a BUSY reply carrying the first dropped line’s id', async (t) => {
    const { guest, heard } = await portPair(t, async () => undefined);
    const lines = Array.from({ length: 10 }, (_, i) => req({ op: 'wait', n: i }));
    guest.write(lines.map(([l]) => `${l}\n`).join(''));
    const reply = await pollUntil(async () => (heard().includes('\n') ? (JSON.parse(heard().split('\n')[0]!) as Reply) : undefined), {
      timeoutMs: 2000,
      what: 'a reply to the lines dropped',
    });
    assert.deepEqual([reply.id, reply.ok, reply.code], [lines[8]![1], false, 'BUSY']);
  });

  it('13: a port not connected at reattach is tried again until it connects, logged at warn; close() stops the retries', async () => {
    const warned: unknown[] = [];
    const log = { ...silentLogger(), warn: (...a: unknown[]) => warned.push(a), info: () => undefined, error: () => undefined };
    const ports = new ForkPorts();
    let tries = 0;
    ports.retry(
      new Error('refused'),
      () => (++tries < 3 ? Promise.reject(new Error('still refused')) : Promise.resolve()),
      log as never,
      5,
      2000,
    );
    assert.equal(warned.length, 1, 'warned at once');
    await pollUntil(async () => (tries === 3 && ports.retrying === 0 ? true : undefined), { timeoutMs: 2000, what: 'three tries' });
    ports.retry(new Error('refused'), () => Promise.reject(new Error('no')), log as never, 5, 60_000);
    assert.equal(ports.retrying, 1);
    ports.close();
    assert.equal(ports.retrying, 0, 'close() clears the retry timer');
  });
});

reportDuration('self-fork mends unit tests');
