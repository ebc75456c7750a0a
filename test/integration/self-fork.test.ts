import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { pollUntil } from '@forky/base';
import { RemoteError, subjects, type VmEvent, type VmInfo } from '@forky/contract';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

/** The budget of the root: the fork bomb must stop with exactly MAX_ALIVE VMs of its tree alive. */
const MAX_ALIVE = 4;
const POLICY = { maxChildren: 50, maxDepth: 1, maxAlive: MAX_ALIVE };
/** A guest script's outcome appears in a file; what the guest does under TCG gets this long. */
const GUEST_MS = 120_000;
/** A `vm.list` from another client while the bomb runs must be answered within this. */
const LIST_BOUND_MS = 5000;

/** Reads the clock to the microsecond (busybox date has no %N): seconds.micros. */
const CLOCK = 'adjtimex | awk \'/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d.%06d", s, u }\'';

/**
 * Issue 22 on real QEMU (tiny, TCG): a guest forks itself with `forky-fork`. One VM with a policy
 * is the root of every fork here; a second, without one, is refused; a second host (booting
 * nothing) and a scheduler take a `--spread` fork's share. The scripts run in the background (a
 * fork hands the VM to a new QEMU process, which ends any exec in flight), and their outcome is
 * read from files in each VM once it is there.
 */
describe('self-fork: a guest forks itself (real QEMU)', { timeout: 900_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  /** A second host and a scheduler, for `--spread` (they boot nothing). */
  let host2: TestHost;
  let sched: TestScheduler;
  let other: NatsConnection;
  let root: VmInfo;
  let plain: VmInfo;
  const events: VmEvent[] = [];

  const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd, timeoutMs: 60_000 }));
  /** Starts `script` in the VM in a session of its own: it outlives the exec (qemu-ga ends the exec's process group). */
  const spawn = (id: string, script: string): Promise<string> =>
    sh(id, `setsid sh -c '${script.replaceAll("'", "'\\''")}' </dev/null >/dev/null 2>&1 &`);
  /** The script's stdout; undefined while the VM is frozen or paused for a fork (the exec is refused then). */
  const whenRunning = async (id: string, script: string): Promise<string | undefined> => {
    // Through the scheduler: it reaches a VM on either host.
    const r = await sched.client.call('vm.exec', { id, cmd: ['/bin/sh', '-c', script], timeoutMs: 60_000 }).catch((e: unknown) => {
      if (e instanceof RemoteError && e.code === 'INVALID_STATE') return undefined;
      throw e;
    });
    return r?.exitCode === 0 ? r.stdout : undefined;
  };
  /** The file's text once it exists (scripts write `name.tmp`, then rename it). */
  const fileIn = (id: string, file: string, timeoutMs = GUEST_MS): Promise<string> =>
    pollUntil(async () => (await whenRunning(id, `cat ${file} 2>/dev/null`)) || undefined, {
      timeoutMs,
      intervalMs: 200,
      what: `${file} in ${id}`,
    });
  const treeOf = async (rootId: string): Promise<VmInfo[]> =>
    (await host.client.call('vm.list', {})).vms.filter((v) => v.selfFork?.root === rootId && v.state !== 'failed');

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url);
    host2 = await startTestHost(nats.url);
    sched = await startTestScheduler(nats.url);
    other = await connect({ servers: nats.url, name: 'self-fork-other-client' });
    const sub = other.subscribe(subjects.events);
    void (async () => {
      for await (const m of sub) events.push(JSON.parse(m.string()) as VmEvent);
    })();
    root = await host.client.call('vm.boot', { image: 'tiny', memMiB: 128, selfFork: POLICY });
    plain = await host.client.call('vm.boot', { image: 'tiny', memMiB: 128 });
  });

  after(async () => {
    for (const h of [host, host2])
      for (const v of (await h?.client.call('vm.list', {}).catch(() => ({ vms: [] })))?.vms ?? [])
        await h?.client.call('vm.destroy', { id: v.id }).catch(() => undefined);
    await other?.close();
    await sched?.stop();
    await host2?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it('vm.show reports the policy: the root of its own tree, depth 0', () => {
    assert.deepEqual(root.selfFork, { policy: POLICY, root: root.id, depth: 0, children: 0 });
    assert.equal(plain.selfFork, undefined);
  });

  it('forky-fork --count 3: the parent gets 3 ids; each child its index, its own id and the memory marker; --wait collects 3 results', async () => {
    const mark = `MARK-${randomBytes(6).toString('hex')}`;
    await spawn(
      root.id,
      `m=${mark}; echo "$m" > /tmp/m; out=$(forky-fork --count 3 2>/tmp/fork.err); rc=$?; ` +
        `{ echo "rc=$rc"; echo "$out"; echo "var=$m"; echo "vmid=$(cat /run/forky/vm-id)"; } > /tmp/fork.tmp && mv /tmp/fork.tmp /tmp/fork.out`,
    );
    const parentOut = (await fileIn(root.id, '/tmp/fork.out')).trim().split('\n');
    assert.equal(parentOut[0], 'rc=0', `the parent's forky-fork: ${parentOut.join(' | ')} ${await sh(root.id, 'cat /tmp/fork.err')}`);
    const ids = parentOut.slice(1, 4);
    assert.equal(ids.length, 3);
    for (const id of ids) assert.match(id, /^vm-[a-z0-9]{12}$/);
    assert.equal(parentOut[4], `var=${mark}`);
    assert.equal(new Set(ids).size, 3);

    for (const [i, id] of ids.entries()) {
      const out = (await fileIn(id, '/tmp/fork.out')).trim().split('\n');
      assert.deepEqual(out, ['rc=0', `child ${i + 1} ${id}`, `var=${mark}`, `vmid=${id}`], `child ${id}`);
      const env = await sh(id, 'cat /run/forky/fork; cat /tmp/m; hostname');
      assert.equal(env, `FORKY_FORK_INDEX=${i + 1}\nFORKY_FORK_COUNT=3\nFORKY_VM_ID=${id}\nFORKY_FORK_PARENT=${root.id}\n${mark}\n${id}\n`);
      const info = await host.client.call('vm.show', { id });
      assert.deepEqual(info.selfFork, { policy: POLICY, root: root.id, depth: 1, children: 0 });
    }
    assert.equal((await host.client.call('vm.show', { id: root.id })).selfFork?.children, 3);
    const ev = events.find((e) => e.kind === 'forked' && e.vm === root.id);
    assert.equal(ev?.reason, 'self-fork', 'the fork is an event naming the requesting VM, reason self-fork');
    assert.deepEqual(ev?.children, ids);

    // Each child reports and is destroyed; the parent's --wait gets every result, in index order.
    for (const [i, id] of ids.entries())
      await spawn(id, `forky-fork --result '{"index":${i + 1},"vm":"'$(cat /run/forky/vm-id)'"}' --exit-after-result`);
    await spawn(root.id, 'r=$(forky-fork --wait --timeout 120 2>&1); echo "rc=$? $r" > /tmp/wait.tmp && mv /tmp/wait.tmp /tmp/wait.out');
    const waited = (await fileIn(root.id, '/tmp/wait.out')).trim();
    assert.match(waited, /^rc=0 /, waited);
    const results = JSON.parse(waited.slice(5)) as Array<{ vm: string; index: number; result?: unknown }>;
    assert.deepEqual(
      results,
      ids.map((vm, i) => ({ vm, index: i + 1, result: { index: i + 1, vm } })),
    );
    await pollUntil(async () => ((await treeOf(root.id)).length === 1 ? true : undefined), {
      timeoutMs: 30_000,
      intervalMs: 100,
      what: 'the children destroyed after their results',
    });
  });

  it('a VM booted without a policy is refused in the guest: exit 1, the message, nothing made', async () => {
    const before = (await host.client.call('vm.list', {})).vms.length;
    const snaps = (await host.client.call('snapshot.list', {})).snapshots.length;
    const out = await sh(plain.id, 'forky-fork --count 2 2>&1; echo "rc=$?"');
    assert.equal(out, 'forky-fork: FORBIDDEN: self-fork is off for this VM: boot it with a selfFork policy\nrc=1\n');
    assert.equal((await host.client.call('vm.list', {})).vms.length, before);
    assert.equal((await host.client.call('snapshot.list', {})).snapshots.length, snaps);
  });

  it('latency: self-fork call → the child runs its next line, against an outside fork of the same VM', async (t) => {
    // The parent's clock is read against the host's: the child's is the host's once its identity is set.
    const g0 = Date.now();
    const guest = Number(await sh(root.id, CLOCK)) * 1000;
    const g1 = Date.now();
    const offset = guest - (g0 + g1) / 2;
    await spawn(
      root.id,
      `t0=$(${CLOCK}); id=$(forky-fork --live); t1=$(${CLOCK}); echo "$t0 $t1 $id" > /tmp/lat.tmp && mv /tmp/lat.tmp /tmp/lat.out`,
    );
    const parentLine = (await fileIn(root.id, '/tmp/lat.out')).trim();
    const child = parentLine.split(' ')[2] as string;
    const [t0, t1] = (await fileIn(child, '/tmp/lat.out')).trim().split(' ').map(Number) as [number, number];
    const selfMs = Math.round(t1 * 1000 - (t0 * 1000 - offset));
    const o0 = performance.now();
    const outside = await host.client.call('fork', { source: root.id, count: 1, resumeParent: true });
    const outsideMs = Math.round(performance.now() - o0);
    t.diagnostic(
      `self-fork (live, count 1): call → child's next line ${selfMs} ms (± ${Math.round((g1 - g0) / 2)} ms); ` +
        `outside fork of the same VM (live, count 1, until ready): ${outsideMs} ms (hostd: ${outside.timings.totalMs} ms)`,
    );
    assert.ok(selfMs > 0 && selfMs < 60_000, `self-fork latency ${selfMs} ms`);
    // An outside fork's child is a tree of its own, with the same policy.
    const oc = outside.children[0] as VmInfo;
    assert.deepEqual(oc.selfFork, { policy: POLICY, root: oc.id, depth: 0, children: 0 });
    for (const id of [child, oc.id]) await host.client.call('vm.destroy', { id });
  });

  it('--spread: the children land on both hosts, and each gets its child reply from its own host', async () => {
    await spawn(
      root.id,
      'out=$(forky-fork --count 2 --spread --live 2>/tmp/spread.err); rc=$?; ' +
        '{ echo "rc=$rc"; echo "$out"; } > /tmp/spread.tmp && mv /tmp/spread.tmp /tmp/spread.out',
    );
    const out = (await fileIn(root.id, '/tmp/spread.out')).trim().split('\n');
    assert.equal(out[0], 'rc=0', `${out.join(' | ')} ${await whenRunning(root.id, 'cat /tmp/spread.err')}`);
    const ids = out.slice(1);
    assert.equal(ids.length, 2);
    const vms = (await sched.client.call('vm.list', {})).vms;
    const hosts = ids.map((id) => vms.find((v) => v.id === id)?.host);
    assert.deepEqual(new Set(hosts), new Set([host.hostId, host2.hostId]), `children on ${hosts.join(', ')}`);
    for (const [i, id] of ids.entries()) {
      assert.deepEqual((await fileIn(id, '/tmp/spread.out')).trim().split('\n'), ['rc=0', `child ${i + 1} ${id}`]);
      const info = vms.find((v) => v.id === id);
      // Past maxDepth: a spread child may not self-fork (no host sees the whole tree to count it).
      assert.deepEqual(info?.selfFork, { policy: POLICY, root: root.id, depth: POLICY.maxDepth + 1, children: 0 });
    }
    for (const id of ids) await sched.client.call('vm.destroy', { id });
  });

  it(`a fork bomb stops at maxAlive (${MAX_ALIVE}) and other clients are answered meanwhile`, async (t) => {
    await spawn(root.id, 'while true; do forky-fork >>/tmp/bomb.out 2>>/tmp/bomb.err || sleep 0.2; done');
    const otherClient = new HostdClient(other, host.hostId, { timeoutMs: LIST_BOUND_MS });
    let most = 0;
    let slowest = 0;
    await pollUntil(
      async () => {
        const l0 = performance.now();
        const vms = (await otherClient.call('vm.list', {})).vms.filter((v) => v.selfFork?.root === root.id && v.state !== 'failed');
        slowest = Math.max(slowest, performance.now() - l0);
        most = Math.max(most, vms.length);
        if (vms.length < MAX_ALIVE) return undefined;
        // At the budget: it holds once the root has been refused for it a few times.
        const refusals = (await whenRunning(root.id, 'grep -c maxAlive /tmp/bomb.err || true'))?.trim();
        return Number(refusals) >= 3 ? true : undefined;
      },
      { timeoutMs: 300_000, intervalMs: 250, what: `the bomb to reach ${MAX_ALIVE} VMs and be refused` },
    );
    const tree = await treeOf(root.id);
    t.diagnostic(`tree alive ${tree.length} (most seen ${most}); slowest vm.list from another client ${Math.round(slowest)} ms`);
    assert.equal(tree.length, MAX_ALIVE);
    assert.equal(most, MAX_ALIVE, 'never more than the budget');
    assert.ok(slowest < LIST_BOUND_MS, `vm.list took ${Math.round(slowest)} ms`);
    const err = await fileIn(root.id, '/tmp/bomb.err');
    for (const line of err.trim().split('\n')) assert.match(line, /^forky-fork: (CAPACITY|RATE_LIMITED): /, line);
  });
});
