import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ForkyError, asForkyError } from '@forky/base';
import { Layout, LocalSnapshotStore } from '@forky/hostd/internal';
import { fileTree } from '../helpers/files.js';

const run = promisify(execFile);

/** A full filesystem for real: a 4 MiB tmpfs (needs root to mount), unmounted after. */
describe(
  'a full RAM directory gives typed errors (real tmpfs)',
  { skip: process.getuid?.() !== 0 && 'mounting a tmpfs needs root' },
  () => {
    let mnt: string;
    let dataDir: string;
    let base: string;
    let mounted = false;

    before(async () => {
      mnt = await fs.mkdtemp('/tmp/fk-ramfull-');
      dataDir = await fs.mkdtemp('/tmp/fk-ramfull-data-');
      await run('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'fk-ramfull', mnt]);
      mounted = true;
      // A frozen RAM file elsewhere, 8 MiB of data: a copy of it cannot fit.
      base = path.join(dataDir, 'base.ram');
      await fs.writeFile(base, randomBytes(8 << 20));
    });

    after(async () => {
      if (mounted) await run('umount', [mnt]);
      await fs.rm(mnt, { recursive: true, force: true });
      await fs.rm(dataDir, { recursive: true, force: true });
    });

    it('maps an ENOSPC from a write to CAPACITY, naming the file', async () => {
      const file = path.join(mnt, 'big');
      const raw = await fs.writeFile(file, Buffer.alloc(8 << 20, 1)).then(
        () => assert.fail('the write fit'),
        (e: unknown) => e,
      );
      const e = asForkyError(raw);
      assert.equal(e.code, 'CAPACITY', e.message);
      assert.equal(e.name, 'CapacityError');
      assert.equal(e.cause, raw);
      assert.match(e.message, /no space left on device/);
      // Where the error names the file being written (a copy's destination), so does CAPACITY.
      const src = path.join(dataDir, 'base.ram');
      const copy = asForkyError(
        await fs.copyFile(src, path.join(mnt, 'copy')).then(
          () => assert.fail('the copy fit'),
          (err: unknown) => err,
        ),
      );
      assert.equal(copy.code, 'CAPACITY', copy.message);
      assert.equal(copy.details?.file, path.join(mnt, 'copy'));
      assert.match(copy.message, /no space left on device writing .*copy/);
      await fs.rm(path.join(mnt, 'copy'), { force: true });
      // A tool's report of the same (cp, qemu-img on stderr) is CAPACITY too; other failures stay INTERNAL.
      assert.equal(
        asForkyError(Object.assign(new Error('Command failed'), { stderr: "cp: error writing 'x': No space left on device" })).code,
        'CAPACITY',
      );
      assert.equal(asForkyError(new Error('something else')).code, 'INTERNAL');
      await fs.rm(file, { force: true });
    });

    it("refuses a snapshot's RAM copy that does not fit with CAPACITY, and leaves nothing of it", async () => {
      const store = new LocalSnapshotStore(new Layout(dataDir, mnt));
      const before = [...(await fileTree(mnt)), ...(await fileTree(path.join(dataDir, 'snapshots')))];
      const e = await store.beginRam('snap-full', base).then(
        () => assert.fail('the copy fit'),
        (err: unknown) => err,
      );
      assert.ok(e instanceof ForkyError && e.code === 'CAPACITY', String(e));
      assert.match(e.message, /RAM directory .*snap-full/);
      assert.equal(e.details?.file, store.files('snap-full').ram);
      assert.deepEqual([...(await fileTree(mnt)), ...(await fileTree(path.join(dataDir, 'snapshots')))], before);
      assert.deepEqual(await fs.readdir(path.join(dataDir, 'snapshots')).catch(() => []), [], 'no snapshot directory is left');
    });
  },
);
