import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildProgram, formatTable, type Session, type SessionOptions } from '@forky/cli';
import type { VmInfo } from '@forky/contract';

const VM: VmInfo = {
  id: 'vm-aaaaaaaaaaaa',
  host: 'h1',
  state: 'running',
  image: 'tiny',
  memMiB: 256,
  cpus: 1,
  accel: 'tcg',
  createdAt: '2026-01-01T00:00:00.000Z',
};
const SNAP = {
  id: 'snap-aaaaaaaaaaaa',
  host: 'h1',
  image: 'tiny',
  vm: VM.id,
  profile: { accel: 'tcg', qemuVersion: '9', machine: 'q35', cpuModel: 'max', cpus: 1, memMiB: 256, imageId: 'x' },
  createdAt: VM.createdAt,
  sizes: { stateBytes: 0, ramBytes: 0, diskBytes: 0 },
};

class ExitError extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** Runs `forky ARGS` against a session of our own that records each request and answers `reply`. */
async function run(
  args: string[],
  reply: unknown,
): Promise<{ sent: Array<[string, unknown]>; opened: SessionOptions[]; stdout: string; stderr: string; code?: number }> {
  const sent: Array<[string, unknown]> = [];
  const opened: SessionOptions[] = [];
  const session: Session = {
    call: async (endpoint, body) => {
      sent.push([endpoint, body]);
      return reply as never;
    },
    uploadApps: async () => [],
    raw: async (subject, body) => (sent.push([subject, body]), reply),
    // vm exec and the other stream commands are tested in cli-sandbox.test.ts.
    stream: async () => assert.fail('no streams in these tests'),
    close: async () => undefined,
  };
  let stdout = '';
  let stderr = '';
  const write = process.stdout.write.bind(process.stdout);
  const writeErr = process.stderr.write.bind(process.stderr);
  // The test runner reports on stdout too, through a composed stream, at any time (an action's lazy
  // import leaves it room): its writes go through, as in cli-sandbox.test.ts.
  const ours = (): boolean => !new Error().stack?.includes('node:internal/streams/compose');
  process.stdout.write = ((s: string) => (ours() ? ((stdout += s), true) : write(s))) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => ((stderr += s), true)) as typeof process.stderr.write;
  try {
    const program = buildProgram({
      openSession: async (o) => (opened.push(o), session),
      exit: (code) => {
        throw new ExitError(code);
      },
    });
    await program.parseAsync(['node', 'forky', ...args]);
    return { sent, opened, stdout, stderr };
  } catch (e) {
    if (e instanceof ExitError) return { sent, opened, stdout, stderr, code: e.code };
    throw e;
  } finally {
    process.stdout.write = write;
    process.stderr.write = writeErr;
  }
}

describe('CLI commands parse their arguments into requests (no cluster)', () => {
  afterEach(() => {
    process.exitCode = undefined;
  });

  it('--request-timeout sets the deadline of one request attempt, before or after the command', async () => {
    const before = await run(['--request-timeout', '1234', 'vm', 'ls'], { vms: [] });
    const after = await run(['vm', 'ls', '--request-timeout', '4321'], { vms: [] });
    assert.equal(before.opened[0]?.requestTimeoutMs, 1234);
    assert.equal(after.opened[0]?.requestTimeoutMs, 4321);
  });

  it('fork sends a keyed request with its options; bad input exits 2 before anything is sent', async () => {
    const r = await run(['--json', 'fork', VM.id, '--count', '3', '--live', '--until', 'running'], {
      snapshot: SNAP,
      children: [VM],
      timings: { snapshotMs: 1, totalMs: 2, childMs: [2] },
    });
    const [endpoint, body] = r.sent[0] as [string, Record<string, unknown>];
    assert.equal(endpoint, 'fork');
    assert.deepEqual(
      { ...body, key: undefined },
      { source: VM.id, count: 3, spread: false, resumeParent: true, until: 'running', key: undefined },
    );
    assert.match(String(body.key), /^fork-/);
    const bad = await run(['fork', VM.id, '--count', '0'], {});
    assert.equal(bad.code, 2);
    assert.deepEqual(bad.sent, []);
    const badExec = await run(['vm', 'exec', VM.id, '--timeout', 'soon', '--', 'true'], {});
    assert.equal(badExec.code, 2);
    assert.deepEqual(badExec.sent, []);
  });

  it('vm ls prints a table of the VM columns', async () => {
    const r = await run(['vm', 'ls'], { vms: [VM] });
    assert.deepEqual(r.sent, [['vm.list', {}]]);
    const row: VmInfo & { expires?: string } = VM;
    assert.equal(
      r.stdout,
      formatTable([row], ['id', 'name', 'host', 'state', 'image', 'memMiB', 'parentSnapshot', 'pid', 'expires', 'labels']),
    );
    assert.match(
      r.stdout,
      /^ID +NAME +HOST +STATE +IMAGE +MEMMIB +PARENTSNAPSHOT +PID +EXPIRES +LABELS\nvm-aaaaaaaaaaaa +- +h1 +running +tiny +256 +- +- +- +-\n$/,
    );
    // Filters go to the cluster as asked; a VM's labels show as k=v,k=v.
    const f = await run(['vm', 'ls', '--label', 'a=1', '--label', 'b=x=y', '--state', 'running,paused', '--parent', SNAP.id], {
      vms: [{ ...VM, name: 'web', labels: { a: '1', b: 'x=y' } }],
    });
    assert.deepEqual(f.sent, [['vm.list', { labels: { a: '1', b: 'x=y' }, state: ['running', 'paused'], parent: SNAP.id }]]);
    assert.match(f.stdout, /\nvm-aaaaaaaaaaaa +web +h1 .* a=1,b=x=y\n$/);
    const bad = await run(['vm', 'ls', '--label', 'novalue'], { vms: [] });
    assert.equal(bad.code, 2);
    assert.deepEqual(bad.sent, []);
  });

  it('lifetimes: --ttl and --idle go into boot and fork, vm extend sends ttlMs, ls filters by template and shows what is left', async () => {
    const boot = await run(['--json', 'vm', 'boot', '--template', 'py', '--ttl', '10m', '--idle', '90s:pause'], VM);
    assert.deepEqual(
      boot.sent.map(([e, b]) => [e, { ...(b as object), key: undefined }]),
      [['vm.boot', { template: 'py', ttlMs: 600_000, idle: { afterMs: 90_000, then: 'pause' }, key: undefined }]],
    );
    const fork = await run(['--json', 'fork', VM.id, '--count', '2', '--ttl', '2h', '--idle', '5m:destroy'], {
      snapshot: SNAP,
      children: [VM],
      timings: { snapshotMs: 1, totalMs: 2, childMs: [2] },
    });
    const forkBody = fork.sent[0]?.[1] as Record<string, unknown>;
    assert.equal(forkBody.ttlMs, 7_200_000);
    assert.deepEqual(forkBody.idle, { afterMs: 300_000, then: 'destroy' });
    const sf = await run(['--json', 'vm', 'boot', '--self-fork', 'max-children=8,max-depth=1,max-alive=9'], VM);
    assert.deepEqual((sf.sent[0]?.[1] as Record<string, unknown>).selfFork, { maxChildren: 8, maxDepth: 1, maxAlive: 9 });
    const ext = await run(['--json', 'vm', 'extend', VM.id, '--ttl', '30m'], VM);
    assert.deepEqual(ext.sent, [['vm.extend', { id: VM.id, ttlMs: 1_800_000 }]]);
    const inFive = new Date(Date.now() + 300_500).toISOString();
    const ls = await run(['vm', 'ls', '--template', 'py'], {
      vms: [{ ...VM, template: 'py', lifecycle: { ttlMs: 600_000, expiresAt: inFive } }],
    });
    assert.deepEqual(ls.sent, [['vm.list', { template: 'py' }]]);
    assert.match(ls.stdout, /\nvm-aaaaaaaaaaaa .* (5m0s|4m59s) +-\n$/);
  });

  it('a bad --ttl, --idle or events --label exits 2 naming the flag, before anything is sent', async () => {
    const bad: Array<[string[], RegExp]> = [
      [['vm', 'boot', '--ttl', 'soon'], /--ttl must be a duration like/],
      [['vm', 'boot', '--ttl', '500ms'], /--ttl: from 1s to 30d/],
      [['vm', 'boot', '--ttl', '31d'], /--ttl: from 1s to 30d/],
      [['vm', 'boot', '--ttl', '99999999999999999h'], /--ttl must be a duration like/],
      [['vm', 'boot', '--idle', '5m'], /--idle must be DURATION:pause or DURATION:destroy/],
      [['vm', 'boot', '--idle', '5m:sleep'], /--idle must be DURATION:pause or DURATION:destroy/],
      [['vm', 'boot', '--idle', ':pause'], /--idle must be DURATION:pause/],
      [['vm', 'boot', '--idle', 'x:pause'], /--idle must be a duration like/],
      [['fork', VM.id, '--count', '1', '--ttl', '-5s'], /--ttl must be a duration like/],
      [['fork', VM.id, '--count', '1', '--idle', '0s:destroy'], /--idle: from 1s to 30d/],
      [['vm', 'extend', VM.id, '--ttl', '1x'], /--ttl must be a duration like/],
      [['vm', 'extend', VM.id], /required option '--ttl <duration>'/],
      [['vm', 'boot', '--self-fork', 'max-children=2,max-depth=1'], /--self-fork takes .*: all three/],
      [['vm', 'boot', '--self-fork', 'max-children=2,max-depth=1,max-alive=3,max-depth=2'], /--self-fork takes /],
      [['vm', 'boot', '--self-fork', 'max-children=-1,max-depth=1,max-alive=3'], /--self-fork takes /],
      // Filtered on this side: a bad label is refused before connecting.
      [['events', '--label', 'novalue'], /--label "novalue": expected KEY=VALUE/],
      [['events', '--label', 'a=1', '--label', `k=${'x'.repeat(300)}`], /--label: /],
    ];
    for (const [args, message] of bad) {
      const r = await run(args, VM);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
      assert.deepEqual(r.sent, [], args.join(' '));
      assert.deepEqual(r.opened, [], `${args.join(' ')}: not even connected`);
    }
  });

  it('snapshot rm --cascade and vm pause are sent as asked, without a key (their contract has none)', async () => {
    const rm = await run(['snapshot', 'rm', SNAP.id, '--cascade'], { snapshots: [SNAP.id], vms: [] });
    assert.deepEqual(rm.sent, [['snapshot.delete', { id: SNAP.id, cascade: true }]]);
    const pause = await run(['vm', 'pause', VM.id], VM);
    assert.deepEqual(pause.sent, [['vm.pause', { id: VM.id }]]);
  });
});
