import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { ForkyError } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { lookupUser } from '@forky/hostd';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';

/** What the kernel says about a process: its uids, no_new_privs, seccomp mode. */
async function confinement(
  pid: number,
): Promise<{ uids: number[]; noNewPrivs: number; seccomp: number; cmdline: string[]; nice: number[] }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  // Field 19 of each thread's stat (after the command in parentheses, field 3 is the first).
  const threads = await fs.readdir(`/proc/${pid}/task`);
  const nice = await Promise.all(
    threads.map(async (t) => Number((await fs.readFile(`/proc/${pid}/task/${t}/stat`, 'utf8')).replace(/^.*\) /s, '').split(' ')[16])),
  );
  const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
  return {
    uids: field('Uid').split(/\s+/).map(Number),
    noNewPrivs: Number(field('NoNewPrivs')),
    seccomp: Number(field('Seccomp')),
    cmdline: (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0'),
    nice,
  };
}

/**
 * QEMU confined: under a root hostd every QEMU process (booted, successor after a snapshot,
 * forked child) runs as the unprivileged forky-qemu user, with a seccomp filter and no way to
 * gain privileges, and still does all its work.
 */
describe('QEMU runs as an unprivileged user, sandboxed', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  const root = process.getuid?.() === 0;

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'confined-h1' });
  });
  after(async () => {
    await host?.stop();
    await nats?.stop();
  });

  it(
    'boots, snapshots and forks with every QEMU process as forky-qemu, seccomp on, no new privileges',
    { skip: root ? false : 'hostd is not root here: QEMU cannot be started as another user' },
    async (t) => {
      const who = await lookupUser('forky-qemu');
      assert.ok(who, 'deploy/setup.sh made the forky-qemu user');
      const vm = await host.client.call('vm.boot', {});
      await host.client.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', 'echo confined > /run/mark'] });
      const snap = await host.client.call('snapshot.create', { vm: vm.id, resume: true });
      const fork = await host.client.call('fork', { source: snap.id, count: 2 });
      for (const c of fork.children)
        assert.equal((await host.client.call('vm.exec', { id: c.id, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'confined');
      const vms = (await host.client.call('vm.list', {})).vms;
      assert.equal(vms.length, 3);
      for (const v of vms) {
        const c = await confinement(v.pid as number);
        assert.deepEqual(c.uids, [who.uid, who.uid, who.uid, who.uid], `${v.id}: real, effective, saved and fs uid are forky-qemu`);
        assert.equal(c.noNewPrivs, 1, `${v.id}: no_new_privs`);
        assert.equal(c.seccomp, 2, `${v.id}: a seccomp filter`);
        // Guests yield the CPU to hostd and NATS (config qemu.nice, default 10), every thread of QEMU.
        assert.deepEqual(new Set(c.nice), new Set([10]), `${v.id}: every QEMU thread at nice 10`);
        assert.ok(c.cmdline.includes('-runas'));
        assert.ok(c.cmdline.some((a) => a.startsWith('on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny')));
      }
      t.diagnostic(
        `3 QEMU processes (booted and resumed after a snapshot, 2 forked children) run as forky-qemu (uid ${who.uid}), seccomp mode 2, no_new_privs 1; children resumed the parent's memory`,
      );
    },
  );

  it('refuses a runAs user that does not exist, naming the field', { skip: root ? false : 'needs root' }, async () => {
    const err = await startTestHost(nats.url, { hostId: 'confined-h2', overrides: { qemu: { runAs: 'no-such-user' } } }).then(
      () => assert.fail('must not start'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ForkyError);
    assert.equal(err.code, 'BAD_REQUEST');
    assert.equal(err.details?.field, 'qemu.runAs');
    assert.match(err.message, /no user no-such-user/);
  });
});
