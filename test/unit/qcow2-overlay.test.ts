import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { ValidationError } from '@forky/base';
import { MAX_NATIVE_SIZE, overlayBytes, writeOverlay } from '@forky/hostd/internal';

const GiB = 2 ** 30;
const TiB = 2 ** 40;
const CLUSTER_BYTES = 1 << 16;
/** 1 MiB .. 64 GiB, odd ones (not a multiple of 512, one byte over an L1 entry's span), and the edges. */
const SIZES = [0, 1, 511, 1 << 20, 1_000_001, 512 * 2 ** 20 + 1, GiB, 3 * GiB + 12_345, 8 * GiB, 64 * GiB, 4 * TiB + 1, 64 * TiB];
const NAMES = ['base.qcow2', `img-${'0123456789abcdef'.repeat(2)}.qcow2`, 'lyr-a1b2c3d4e5f6.qcow2', 'bäse layer.qcow2', 'x'.repeat(255)];

const qemuImg = (...args: string[]): Promise<{ stdout: string }> => execa('qemu-img', args);

describe('qcow2 overlays written without qemu-img', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-qcow2-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('are byte for byte what qemu-img create writes, and qemu-img check passes on them', async () => {
    for (const size of SIZES)
      for (const name of size === GiB ? NAMES : NAMES.slice(0, 1)) {
        const theirs = path.join(dir, 'theirs.qcow2');
        const ours = path.join(dir, 'ours.qcow2');
        await fs.rm(theirs, { force: true });
        await qemuImg('create', '-q', '-u', '-f', 'qcow2', '-b', name, '-F', 'qcow2', theirs, String(size));
        assert.equal(await writeOverlay(ours, name, size), true, `size ${size}`);
        const [a, b] = await Promise.all([fs.readFile(theirs), fs.readFile(ours)]);
        assert.equal(b.length, a.length, `length, size ${size} name ${name}`);
        assert.ok(b.equals(a), `bytes, size ${size} name ${name}: first difference at ${a.findIndex((x, i) => x !== b[i])}`);
        assert.equal((await fs.stat(ours)).mode & 0o777, (await fs.stat(theirs)).mode & 0o777);
        // check opens the chain: the backing is a real (empty) qcow2 of that name.
        const backing = path.join(dir, name);
        if (!(await fs.stat(backing).catch(() => undefined))) await qemuImg('create', '-q', '-f', 'qcow2', backing, String(GiB));
        await qemuImg('check', '-q', ours);
      }
  });

  it('read through to the backing file and take writes of their own', async () => {
    const base = path.join(dir, 'base.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, String(64 << 20));
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 64k', base]);
    const top = path.join(dir, 'top.qcow2');
    await writeOverlay(top, 'base.qcow2', 64 << 20);
    const info = JSON.parse((await qemuImg('info', '--output=json', '--backing-chain', top)).stdout) as Array<{ 'virtual-size': number }>;
    assert.equal(info.length, 2, 'the chain is top → base');
    assert.equal(info[0]?.['virtual-size'], 64 << 20);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 1M 64k', '-c', 'write -P 0xcd 2M 4k', top]);
    // Its write stayed in the overlay; the base has no such data.
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xcd 2M 4k', top]);
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 2M 4k', base]);
    await qemuImg('check', '-q', top);
  });

  it('replace a file there by a rename: one held open keeps its bytes; a failed write leaves no temp file', async () => {
    const sub = await fs.mkdtemp(path.join(dir, 'swap-'));
    const file = path.join(sub, 'inuse.qcow2');
    const old = Buffer.alloc(4 * CLUSTER_BYTES, 0x5a);
    await fs.writeFile(file, old);
    // As a QEMU that has it open: the file it holds must not be truncated under it.
    const held = await fs.open(file, 'r');
    try {
      assert.equal(await writeOverlay(file, 'base.qcow2', 1 << 20), true);
      const seen = Buffer.alloc(old.length);
      await held.read(seen, 0, old.length, 0);
      assert.ok(seen.equals(old), 'the open file keeps its bytes');
      assert.equal((await held.stat()).size, old.length);
    } finally {
      await held.close();
    }
    assert.ok((await fs.readFile(file)).equals(overlayBytes('base.qcow2', 1 << 20) as Buffer), 'the name has the new overlay');
    const dirAsFile = path.join(sub, 'adir.qcow2');
    await fs.mkdir(dirAsFile);
    await assert.rejects(writeOverlay(dirAsFile, 'base.qcow2', 1 << 20));
    assert.deepEqual((await fs.readdir(sub)).sort(), ['adir.qcow2', 'inuse.qcow2'], 'no temp file left');
  });

  it('leave a size above what was checked to qemu-img, writing nothing', async () => {
    const file = path.join(dir, 'huge.qcow2');
    assert.equal(overlayBytes('base.qcow2', MAX_NATIVE_SIZE + 1), undefined);
    assert.equal(await writeOverlay(file, 'base.qcow2', MAX_NATIVE_SIZE + 512), false);
    await assert.rejects(fs.stat(file), { code: 'ENOENT' });
  });

  it('refuse bad input with a typed error naming the field, writing nothing', async () => {
    const file = path.join(dir, 'bad.qcow2');
    const cases: Array<[string, number, string]> = [
      ['base.qcow2', -1, 'virtualSize'],
      ['base.qcow2', 1.5, 'virtualSize'],
      ['base.qcow2', Number.NaN, 'virtualSize'],
      ['base.qcow2', 2 ** 60, 'virtualSize'],
      ['', GiB, 'backing'],
      ['../base.qcow2', GiB, 'backing'],
      ['a\0b', GiB, 'backing'],
      ['a\nb', GiB, 'backing'],
      ['é'.repeat(512), GiB, 'backing'],
    ];
    for (const [name, size, field] of cases) {
      await assert.rejects(writeOverlay(file, name, size), (e: unknown) => {
        assert.ok(e instanceof ValidationError, `${name} ${size}`);
        assert.equal(e.details?.field, field, `${JSON.stringify(name)} ${size}`);
        return true;
      });
      await assert.rejects(fs.stat(file), { code: 'ENOENT' });
    }
  });
});
