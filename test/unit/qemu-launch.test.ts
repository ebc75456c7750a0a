import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { withDeadline } from '@forky/base';
import { launchCommand } from '@forky/hostd/internal';

/** Runs what launchCommand makes, detached as QEMU is (its own session), and returns its stdout. */
async function run(cmd: [string, string[]]): Promise<{ out: string; code: number | null }> {
  const child = spawn(cmd[0], cmd[1], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const code = await withDeadline(new Promise<number | null>((res) => child.once('close', res)), 10_000, 'the launched command');
  return { out, code };
}

// What the program sees of its own niceness: its autogroup's, then its thread's.
const probe = ['-c', 'cat /proc/self/autogroup; ps -o ni= -p $$'];

describe('QEMU launch: niceness that holds in its own session', () => {
  it(
    'nice 10: the thread and its autogroup both get it (with autogroups, the thread alone counts for nothing)',
    {
      skip: existsSync('/proc/self/autogroup') ? false : 'this kernel has no autogroups',
    },
    async () => {
      const { out, code } = await run(launchCommand('/bin/sh', probe, undefined, 10));
      assert.equal(code, 0);
      const [group, thread] = out.trim().split('\n');
      assert.match(group ?? '', /nice 10$/, `autogroup: ${group}`);
      assert.equal(thread?.trim(), '10');
    },
  );

  it(
    'not root, 6 at once: each still gets its autogroup nice (without CAP_SYS_ADMIN the kernel takes one write per 100 ms)',
    {
      skip: existsSync('/proc/self/autogroup') && process.getuid?.() === 0 ? false : 'needs autogroups, and root to drop to nobody',
    },
    async () => {
      const [cmd, argv] = launchCommand('/bin/sh', probe, undefined, 7);
      const runs = await Promise.all(
        Array.from({ length: 6 }, () => run(['setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...argv]])),
      );
      for (const { out, code } of runs) {
        assert.equal(code, 0);
        assert.match(out.split('\n')[0] ?? '', /nice 7$/, out);
      }
    },
  );

  it('nice 0 and no scope: the binary itself, no shell between', () => {
    assert.deepEqual(launchCommand('/usr/bin/qemu', ['-a', 'b c'], undefined, 0), ['/usr/bin/qemu', ['-a', 'b c']]);
  });

  it('arguments reach the program as they are (spaces, quotes, $)', async () => {
    const { out } = await run(launchCommand('/bin/echo', ['a b', "it's", '$HOME'], undefined, 5));
    assert.equal(out, "a b it's $HOME\n");
  });

  it('a scope it cannot join: exit 125, the program never runs', async () => {
    const { out, code } = await run(launchCommand('/bin/echo', ['ran'], '/nonexistent/forky-scope', 5));
    assert.equal(code, 125);
    assert.equal(out, '');
  });
});
