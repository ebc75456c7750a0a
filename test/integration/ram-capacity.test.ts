import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { VmInfo } from '@forky/contract';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { refused } from '../helpers/errors.js';
import { fileTree } from '../helpers/files.js';
import { ensureImageOnce } from '../helpers/repo.js';

const run = promisify(execFile);
const MiB = 2 ** 20;
const TMPFS_MIB = 400;
const GUEST_MIB = 256;
const allocMiB = async (file: string): Promise<number> => Math.round(((await fs.stat(file)).blocks * 512) / MiB);

/**
 * A host whose RAM directory is a 400 MiB tmpfs, and 256 MiB guests: one VM fits, a second does
 * not; a fork's children fill the frozen RAM file, but never past its guest's size, which
 * admission has kept for them.
 */
describe(
  'a host on a small RAM directory (real QEMU, a 400 MiB tmpfs)',
  { timeout: 600_000, skip: process.getuid?.() !== 0 && 'mounting a tmpfs needs root' },
  () => {
    let nats: NatsServer;
    let host: TestHost;
    let mnt: string;
    let mounted = false;
    let vmA: VmInfo;
    let c1: VmInfo;
    let c2: VmInfo;
    let snapFile: string;
    const fig = { booted: 0, frozen: 0, child1: 0, child2: 0, destroyed: 0 };
    const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd }));
    /** Everything the host has on disk and in RAM, and what it lists: "nothing changed" is checked against this. */
    const state = async (): Promise<unknown> => ({
      data: await fileTree(host.dataDir),
      ram: await fileTree(mnt),
      vms: (await host.client.call('vm.list', {})).vms.map((v) => `${v.id}:${v.state}`).sort(),
      snaps: (await host.client.call('snapshot.list', {})).snapshots.map((s) => s.id).sort(),
    });

    before(async () => {
      await ensureImageOnce();
      mnt = await fs.mkdtemp('/tmp/fk-ramcap-');
      // Its own mode: QEMU, once it has dropped to its user, must pass through it.
      await run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_MIB}m,mode=0711`, 'fk-ramcap', mnt]);
      mounted = true;
      nats = await startNatsServer();
      host = await startTestHost(nats.url, { overrides: { ramDir: mnt, pool: { size: 0 } } });
    });

    after(async () => {
      await host?.stop();
      await nats?.stop();
      if (mounted) await run('umount', [mnt]).catch(() => run('umount', ['-l', mnt]));
      await fs.rm(mnt, { recursive: true, force: true });
    });

    it('admits a boot that fits and refuses one that does not with CAPACITY, before anything is made', async () => {
      vmA = await host.client.call('vm.boot', { image: 'tiny', memMiB: GUEST_MIB });
      fig.booted = await allocMiB(path.join(mnt, 'vms', `${vmA.id}.ram`));
      const was = await state();
      const e = await refused(host.client.call('vm.boot', { image: 'tiny', memMiB: GUEST_MIB }));
      assert.equal(e.code, 'CAPACITY', e.message);
      assert.equal(e.details?.field, 'memMiB');
      assert.equal(e.details?.needMiB, GUEST_MIB);
      assert.equal(e.details?.dir, mnt);
      // The first VM's file takes only what its guest touched, but may grow to its whole size.
      const free = e.details?.freeMiB as number;
      assert.ok(Math.abs(free - (TMPFS_MIB - GUEST_MIB)) <= 2, `free ${free} MiB is the tmpfs less the first VM's ${GUEST_MIB} MiB`);
      assert.ok(
        fig.booted < TMPFS_MIB - GUEST_MIB,
        `the second boot would have found ${TMPFS_MIB - fig.booted} MiB free on the filesystem`,
      );
      assert.deepEqual(await state(), was, 'a refused boot changes nothing');
      console.log(`refused: ${e.message}`);
    });

    it("lets a fork's children fill the frozen RAM file only up to its guest's size, kept for them", async () => {
      const fork = await host.client.call('fork', { source: vmA.id, count: 1 });
      c1 = fork.children[0] as VmInfo;
      snapFile = path.join(mnt, 'snapshots', `${fork.snapshot.id}.ram`);
      fig.frozen = await allocMiB(snapFile);
      // 150 MB of memory the guest never touched before: tmpfs fills each page's hole in the shared file.
      await sh(c1.id, 'dd if=/dev/zero of=/dev/null bs=150M count=1 2>/dev/null');
      fig.child1 = await allocMiB(snapFile);
      c2 = (await host.client.call('fork', { source: fork.snapshot.id, count: 1 })).children[0] as VmInfo;
      await sh(c2.id, 'dd if=/dev/zero of=/dev/null bs=150M count=1 2>/dev/null');
      fig.child2 = await allocMiB(snapFile);
      console.log(
        `snapshot RAM file of a ${GUEST_MIB} MiB guest: frozen ${fig.frozen} MiB; child 1 writes 150 MB: ${fig.child1} MiB (+${fig.child1 - fig.frozen}); child 2 the same: ${fig.child2} MiB (+${fig.child2 - fig.child1})`,
      );
      assert.ok(fig.child2 <= GUEST_MIB, `the file (${fig.child2} MiB) stays within its guest's ${GUEST_MIB} MiB`);
      for (const c of [c1, c2]) assert.equal((await sh(c.id, 'echo alive')).trim(), 'alive', `${c.id} still runs: its pages had room`);
    });

    it('refuses a snapshot or a fork of a child whose RAM copy would not fit, with CAPACITY before ENOSPC, changing nothing', async () => {
      const was = await state();
      const snap = await refused(host.client.call('snapshot.create', { vm: c1.id }));
      assert.equal(snap.code, 'CAPACITY', snap.message);
      assert.deepEqual([snap.details?.field, snap.details?.needMiB, snap.details?.dir], ['vm', GUEST_MIB, mnt]);
      const fork = await refused(host.client.call('fork', { source: c1.id, count: 2 }));
      assert.equal(fork.code, 'CAPACITY', fork.message);
      assert.deepEqual([fork.details?.field, fork.details?.needMiB], ['source', GUEST_MIB]);
      assert.ok((fork.details?.freeMiB as number) < GUEST_MIB);
      assert.deepEqual(await state(), was, 'a refused snapshot or fork changes nothing');
      assert.equal((await sh(c1.id, 'echo alive')).trim(), 'alive', 'the child runs on');
      console.log(`refused: ${snap.message}`);
    });

    it('gives back the zero pages children filled in the frozen file once they are gone', async () => {
      for (const c of [c1, c2]) await host.client.call('vm.destroy', { id: c.id });
      fig.destroyed = await allocMiB(snapFile);
      console.log(`children destroyed: snapshot RAM file ${fig.child2} -> ${fig.destroyed} MiB (frozen at ${fig.frozen})`);
      assert.ok(fig.destroyed <= fig.frozen, `back to at most its frozen ${fig.frozen} MiB, not ${fig.destroyed}`);
      // The VM on the file still reads its memory: it resumes and answers.
      await host.client.call('vm.resume', { id: vmA.id });
      assert.equal((await sh(vmA.id, 'echo alive')).trim(), 'alive');
    });
  },
);
