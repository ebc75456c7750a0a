import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { cliRunner } from '../helpers/cli-run.js';
import { ociLayout, tar, type TarEntry } from '../helpers/oci-tar.js';
import { IMAGE_CACHE_DIR, REPO } from '../helpers/repo.js';

const run = promisify(execFile);

interface Manifest {
  id: string;
  cmdline: string;
  inputKey: string;
}

/**
 * `forky image import` against the security review's hostile tarballs (no QEMU boot): the root is
 * private while a setuid file and a device node are unpacked, one byte budget bounds every
 * decompression, the layer scan is linear, the deadline stops every step, a changed importer is not
 * skipped, times, loader variables, our init, a symlinked /opt. TMPDIR and the image cache are the
 * test's own, so "nothing left" is checked there.
 */
describe('forky image import: hostile tarballs', { timeout: 600_000 }, () => {
  let work: string;
  let data: string;
  let tmp: string;
  const saved = { TMPDIR: process.env.TMPDIR, FORKY_IMAGE_CACHE: process.env.FORKY_IMAGE_CACHE };
  const { forky } = cliRunner(() => data);
  const imp = (...args: string[]) => forky(['--json', 'image', 'import', ...args]);
  const write = async (file: string, b: Buffer): Promise<string> => {
    await fs.writeFile(path.join(work, file), b);
    return path.join(work, file);
  };
  /** The test's TMPDIR holds nothing once an import has ended, and nothing is mounted below it. */
  const nothingLeft = async (): Promise<void> => {
    assert.deepEqual(await fs.readdir(tmp), []);
    assert.ok(!(await fs.readFile('/proc/self/mounts', 'utf8')).includes(tmp), 'a mount left under TMPDIR');
  };
  /** FILE from the image's disk (debugfs on a raw copy). */
  const diskCat = async (name: string, cmd: string): Promise<string> => {
    const raw = path.join(work, `${name}.raw`);
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path.join(data, 'images', name, 'disk.qcow2'), raw]);
    try {
      return (await run('debugfs', ['-R', cmd, raw])).stdout;
    } finally {
      await fs.rm(raw, { force: true });
    }
  };

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-import-hostile-'));
    data = path.join(work, 'data');
    tmp = path.join(work, 'tmp');
    await fs.mkdir(path.join(data, 'images'), { recursive: true });
    await fs.mkdir(tmp);
    const cache = path.join(work, 'cache');
    await fs.mkdir(cache);
    for (const d of ['debs', 'go']) await fs.symlink(path.join(IMAGE_CACHE_DIR, d), path.join(cache, d));
    process.env.FORKY_IMAGE_CACHE = cache;
    process.env.TMPDIR = tmp;
  });

  after(async () => {
    for (const [k, v] of Object.entries(saved))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it('unpacks a setuid file and a device node where no other user reaches them; times, Env, init, whiteouts by name', async () => {
    const report = path.join(work, 'hook.out');
    const hook = path.join(work, 'hook.sh');
    const layer1: TarEntry[] = [
      { name: 'bin/', type: 'dir' },
      { name: 'bin/rootme', data: 'not really a program\n', mode: 0o4755 },
      { name: 'disk', type: 'chardev', dev: [1, 5], mode: 0o666 },
      { name: 'sbin/', type: 'dir' },
      { name: 'sbin/forky-init', data: '#!/bin/sh\necho stale\n', mode: 0o755 },
      { name: 'future', data: 'f\n', mtime: Math.floor(Date.now() / 1000) + 3600 },
      { name: 'café', data: 'to be whited out by a non-ASCII name\n' },
    ];
    const env = ['GREETING=hi', 'LD_PRELOAD=/evil.so', 'GCONV_PATH=/evil', 'LD_AUDIT=/evil.so'];
    const oci = await write('suid.tar', ociLayout([tar(layer1), tar([{ name: '.wh.café' }])], { env }));
    // As root, during the import: the root's parent, its mount, the setuid file; as nobody: reachable?
    await fs.writeFile(
      hook,
      `#!/bin/sh\nr=$1\n{ stat -c %a "$(dirname "$r")"; findmnt -no OPTIONS --target "$r"; stat -c %a "$r/bin/rootme"; stat -c %F "$r/disk"; stat -c %h "${oci}"\n` +
        `setpriv --reuid=65534 --regid=65534 --clear-groups test -e "$r/bin/rootme" && echo reachable || echo unreachable; } > ${report}\n`,
      { mode: 0o755 },
    );
    process.env.FORKY_IMPORT_UNPACKED_HOOK = hook;
    const r = await imp('hostile', oci).finally(() => delete process.env.FORKY_IMPORT_UNPACKED_HOOK);
    assert.equal(r.code, 0, r.stderr);
    const [parent, opts, suid, disk, links, nobody] = (await fs.readFile(report, 'utf8')).trim().split('\n');
    assert.equal(parent, '700');
    assert.match(opts ?? '', /nosuid/);
    assert.match(opts ?? '', /nodev/);
    assert.equal(suid, '4755', 'the setuid member was unpacked as such');
    assert.equal(disk, 'character special file');
    assert.equal(links, '1', 'FILE was copied, not hard-linked');
    assert.equal(nobody, 'unreachable');
    await nothingLeft();
    const m = JSON.parse(await fs.readFile(path.join(data, 'images', 'hostile', 'manifest.json'), 'utf8')) as Manifest;
    assert.match(m.cmdline, / forky\.init=\/opt\/forky\/init$/);
    const envFile = await diskCat('hostile', 'cat /opt/forky/env');
    assert.match(envFile, /^GREETING=hi$/m);
    assert.doesNotMatch(envFile, /LD_PRELOAD|GCONV_PATH|LD_AUDIT/);
    // Every mtime is the epoch: a future one and a past one alike (the same id at any time).
    for (const f of ['/future', '/bin/rootme', '/sbin/forky-init'])
      assert.match(await diskCat('hostile', `stat ${f}`), /mtime: 0x00000000[: ]/);
    const ls = await diskCat('hostile', 'ls -p /');
    assert.ok(!ls.includes('café') && ls.includes('/future/'), ls);
  });

  it('a changed import-layers.sh or image-cache.sh is not skipped', async () => {
    const copy = path.join(work, 'images-copy');
    await fs.cp(path.join(REPO, 'images'), copy, { recursive: true });
    const file = path.join(work, 'suid.tar');
    const script = (env: NodeJS.ProcessEnv = {}) =>
      run('bash', [path.join(copy, 'import-image.sh'), 'hostile', file, path.join(data, 'images')], {
        env: { ...process.env, ...env },
      }).then(
        (x) => ({ code: 0, stderr: x.stderr }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    const same = await script();
    assert.equal(same.code, 0, same.stderr);
    assert.match(same.stderr, /up to date/);
    for (const f of ['import-layers.sh', 'image-cache.sh']) {
      await fs.appendFile(path.join(copy, f), `# changed ${randomBytes(4).toString('hex')}\n`);
      // Not skipped: it gets as far as the unpacked root (where a failing hook stops it).
      const changed = await script({ FORKY_IMPORT_UNPACKED_HOOK: 'false' });
      assert.equal(changed.code, 4, changed.stderr);
      assert.doesNotMatch(changed.stderr, /up to date/);
      assert.match(changed.stderr, /FORKY_IMPORT_UNPACKED_HOOK failed/);
    }
    await nothingLeft();
  });

  it('one budget for all decompressions: a digest listed 4 times (each use counts), and two layers over the budget, are refused', async () => {
    // The reviewer's shape: one gzip blob of 64 MiB of zeros (a tar of end blocks) listed 4 times.
    const zeros = Buffer.alloc(64 << 20);
    const dup = await write('dup.tar', ociLayout([zeros, zeros, zeros, zeros], {}, { gzip: [true, true, true, true] }));
    assert.ok((await fs.stat(dup)).size < 1 << 20);
    process.env.FORKY_IMPORT_MAX_MIB = '100';
    try {
      const r = await imp('bomb-dup', dup);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /the image unpacks to more than the import may write, 100 MiB \(FORKY_IMPORT_MAX_MIB\)/);
      await nothingLeft();
      // Distinct layers, 64 MiB each: the second passes what is left of 100 MiB, while streaming.
      const two = await write('two.tar', ociLayout([Buffer.alloc(64 << 20), Buffer.alloc((64 << 20) + 512)], {}, { gzip: [true, true] }));
      const r2 = await imp('bomb-two', two);
      assert.equal(r2.code, 2, r2.stderr);
      assert.match(r2.stderr, /layer 2: the image unpacks to more than the import may write, 100 MiB \(FORKY_IMPORT_MAX_MIB\)/);
      await nothingLeft();
    } finally {
      delete process.env.FORKY_IMPORT_MAX_MIB;
    }
    assert.equal(await fs.readdir(path.join(data, 'images')).then((d) => d.includes('bomb-two')), false);
  });

  it('checks 10k symlinks and 10k whiteouts in near-linear time', async (t) => {
    const n = 10_000;
    const links = tar(Array.from({ length: n }, (_, i) => ({ name: `s${i}`, type: 'symlink' as const, target: 'x' })));
    const outs = (count: number) =>
      tar([...Array.from({ length: count }, (_, i) => ({ name: `.wh.s${i}` })), { name: '../late-escape', data: 'x' }]);
    // The same refusal (the last member) after a 1-member scan and after a 20k-member one.
    const small = await write('scan-small.tar', ociLayout([tar([{ name: 's0', type: 'symlink', target: 'x' }]), outs(1)], {}));
    const big = await write('scan-big.tar', ociLayout([links, outs(n)], {}));
    const time = async (file: string): Promise<number> => {
      const t0 = performance.now();
      const r = await imp('scan', file);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /late-escape leaves the root/);
      return performance.now() - t0;
    };
    const base = await time(small);
    const scan = (await time(big)) - base;
    t.diagnostic(`20k-member scan: ${Math.round(scan)} ms over the 2-member one (${Math.round(base)} ms)`);
    assert.ok(scan <= 2000, `${scan} ms`);
    await nothingLeft();
  });

  it('refuses an image whose /opt is an absolute symlink (the boot would not find our init)', async () => {
    const f = await write('opt.tar', ociLayout([tar([{ name: 'opt', type: 'symlink', target: '/usr/local/opt' }])], {}));
    const r = await imp('optlink', f);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /\/opt is a symlink or a file/);
    await nothingLeft();
  });

  it('the CLI deadline stops every step of the import, at once', async () => {
    // A 20 GiB sparse file: hashing it takes far longer than the deadline.
    const big = path.join(work, `sparse-${randomBytes(4).toString('hex')}.tar`);
    await fs.writeFile(big, '');
    await fs.truncate(big, 20 * 2 ** 30);
    process.env.FORKY_IMPORT_TIMEOUT_MS = '5000';
    const t0 = performance.now();
    const r = await imp('slow', big).finally(() => delete process.env.FORKY_IMPORT_TIMEOUT_MS);
    const took = performance.now() - t0;
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /timed out after 5000 ms/);
    assert.ok(took < 12_000, `${took} ms`);
    const ps = (await run('ps', ['-eo', 'pid,args'])).stdout;
    assert.ok(!ps.includes(path.basename(big)), ps);
    await nothingLeft();
    await fs.rm(big);
  });
});
