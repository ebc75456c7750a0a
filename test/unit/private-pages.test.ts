import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import { createInterface } from 'node:readline';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { copyPrivatePages, softDirtyTracked } from '@forky/hostd/internal';

const PAGE = 4096;
const PAGES = 8;
/** pagemap high words: present + file page; present + private; present + private + soft-dirty. */
const FILE = 0xa0000000;
const PRIV = 0x80000000;
const DIRTY = 0x80800000;
/** Where the fake process maps the file (a page-aligned address a sparse `mem` file can hold). */
const START = 0x100000;

const page = (tag: string): Buffer => Buffer.alloc(PAGE, tag);
const pagesOf = async (file: string): Promise<string[]> => {
  const b = await fs.readFile(file);
  return Array.from({ length: PAGES }, (_, i) => b.toString('latin1', i * PAGE, i * PAGE + 1));
};

/** A /proc of one process (pid 7) mapping `ram` privately at START: its maps, pagemap and memory are files the test writes. */
class FakeProc {
  readonly pid = 7;
  constructor(
    readonly root: string,
    readonly ram: string,
  ) {}
  get dir(): string {
    return path.join(this.root, String(this.pid));
  }
  async init(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    const end = (START + PAGES * PAGE).toString(16);
    await fs.writeFile(path.join(this.dir, 'maps'), `${START.toString(16)}-${end} rw-p 00000000 00:2a 42    ${this.ram}\n`);
    await fs.writeFile(path.join(this.dir, 'clear_refs'), '');
    await fs.writeFile(path.join(this.dir, 'mem'), '');
  }
  /** Sets each page's pagemap high word and, for a private page, what the process holds there. */
  async state(pages: Record<number, { hi: number; tag?: string }>): Promise<void> {
    const pagemap = Buffer.alloc((START / PAGE + PAGES) * 8);
    const mem = await fs.open(path.join(this.dir, 'mem'), 'r+');
    try {
      for (const [i, p] of Object.entries(pages)) {
        pagemap.writeUInt32LE(p.hi >>> 0, (START / PAGE + Number(i)) * 8 + 4);
        if (p.tag) await mem.write(page(p.tag), 0, PAGE, START + Number(i) * PAGE);
      }
    } finally {
      await mem.close();
    }
    await fs.writeFile(path.join(this.dir, 'pagemap'), pagemap);
  }
}

describe('copying the pages a copy-on-write VM made its own', () => {
  let dir: string;
  let ram: string;
  let proc: FakeProc;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'forky-private-pages-'));
    ram = path.join(dir, 'frozen.ram');
    await fs.writeFile(ram, Buffer.concat(Array.from({ length: PAGES }, (_, i) => page(String(i)))));
    proc = new FakeProc(path.join(dir, 'proc'), ram);
    await proc.init();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  it('pre-copies while the VM runs, then copies in the pause only what was written or made private since', async () => {
    const dest = path.join(dir, 'snap-a.ram');
    await fs.copyFile(ram, dest);
    const tracked = { root: proc.root, softDirty: () => true };
    await proc.state({ 0: { hi: FILE }, 1: { hi: PRIV, tag: 'a' }, 2: { hi: DIRTY, tag: 'b' }, 3: { hi: PRIV, tag: 'c' } });
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, { precopy: true }, tracked), { bytes: 3 * PAGE });
    assert.equal(await fs.readFile(path.join(proc.dir, 'clear_refs'), 'utf8'), '4', 'the soft-dirty bits are cleared first');
    assert.deepEqual(await pagesOf(dest), ['0', 'a', 'b', 'c', '4', '5', '6', '7']);

    // Since: 1 written again (soft-dirty), 2 left alone (its old copy stands: X would show a copy),
    // 3 given back to the file, 5 made private, 6 made private and written.
    await proc.state({
      0: { hi: FILE },
      1: { hi: DIRTY, tag: 'A' },
      2: { hi: PRIV, tag: 'X' },
      3: { hi: FILE },
      5: { hi: PRIV, tag: 'E' },
      6: { hi: DIRTY, tag: 'F' },
    });
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, {}, tracked), { bytes: 4 * PAGE });
    assert.deepEqual(await pagesOf(dest), ['0', 'A', 'b', '3', '4', 'E', 'F', '7']);

    // The pre-copy is used once: a copy again for the same file copies every private page.
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, {}, tracked), { bytes: 4 * PAGE });
    assert.deepEqual(await pagesOf(dest), ['0', 'A', 'X', '3', '4', 'E', 'F', '7']);
  });

  it("a pause copy of a pre-copied file without that process's record refuses (the snapshot rolls back) instead of copying over it blindly", async () => {
    const dest = path.join(dir, 'snap-d.ram');
    await fs.copyFile(ram, dest);
    const tracked = { root: proc.root, softDirty: () => true };
    await proc.state({ 3: { hi: PRIV, tag: 'c' } });
    copyPrivatePages(proc.pid, ram, dest, { precopy: true }, tracked);
    // Another process (the VM's QEMU replaced meanwhile): only the record knows which pages of `dest` are stale.
    assert.throws(() => copyPrivatePages(proc.pid + 1, ram, dest, {}, tracked), { code: 'INTERNAL', message: /pre-copy record/ });
    // Refused once, the file is owed nothing more: a plain copy again works as without a pre-copy.
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, {}, tracked), { bytes: PAGE });
  });

  it('without soft-dirty tracking a pre-copy does nothing and the pause copies every private page', async () => {
    const dest = path.join(dir, 'snap-b.ram');
    await fs.copyFile(ram, dest);
    await fs.writeFile(path.join(proc.dir, 'clear_refs'), '');
    const untracked = { root: proc.root, softDirty: () => false };
    await proc.state({ 1: { hi: PRIV, tag: 'a' } });
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, { precopy: true }, untracked), { bytes: 0 });
    assert.equal(await fs.readFile(path.join(proc.dir, 'clear_refs'), 'utf8'), '', 'nothing is cleared');
    assert.deepEqual(await pagesOf(dest), ['0', '1', '2', '3', '4', '5', '6', '7']);
    await proc.state({ 1: { hi: PRIV, tag: 'b' }, 4: { hi: PRIV, tag: 'd' } });
    assert.deepEqual(copyPrivatePages(proc.pid, ram, dest, {}, untracked), { bytes: 2 * PAGE });
    assert.deepEqual(await pagesOf(dest), ['0', 'b', '2', '3', 'd', '5', '6', '7']);
  });

  it("answers whether the kernel tracks soft-dirty pages as the kernel's config says", async (t) => {
    const config = await fs.readFile('/proc/config.gz').catch(() => undefined);
    if (!config) return t.skip('no /proc/config.gz');
    const configured = /^CONFIG_MEM_SOFT_DIRTY=y$/m.test(gunzipSync(config).toString());
    t.diagnostic(`CONFIG_MEM_SOFT_DIRTY ${configured ? 'set' : 'not set'}`);
    assert.equal(softDirtyTracked(), configured);
  });

  it('a real process: a page written after the pre-copy, before the stop, is in the copy', async () => {
    const dest = path.join(dir, 'snap-c.ram');
    await fs.copyFile(ram, dest);
    const p = await PrivateMapper.start(ram);
    try {
      await p.write(1, 'a');
      await p.write(2, 'b');
      copyPrivatePages(p.pid, ram, dest, { precopy: true });
      await p.write(2, 'B');
      await p.write(5, 'e');
      const { bytes } = copyPrivatePages(p.pid, ram, dest);
      assert.deepEqual(await pagesOf(dest), ['0', 'a', 'B', '3', '4', 'e', '6', '7']);
      assert.equal(bytes, softDirtyTracked() ? 2 * PAGE : 3 * PAGE, 'tracked: only the pages written since');
      assert.deepEqual(await pagesOf(ram), ['0', '1', '2', '3', '4', '5', '6', '7'], 'the mapped file is untouched');
    } finally {
      await p.stop();
    }
  });
});

/** A python process mapping a file copy-on-write (MAP_PRIVATE), writing a page when told: a guest's RAM, without QEMU. */
class PrivateMapper {
  private constructor(
    private readonly proc: ChildProcessWithoutNullStreams,
    private readonly lines: AsyncIterator<string>,
  ) {}
  get pid(): number {
    return this.proc.pid as number;
  }
  static async start(file: string): Promise<PrivateMapper> {
    const script = [
      'import mmap, sys',
      `f = open(${JSON.stringify(file)}, "rb")`,
      'm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)',
      'print("ready", flush=True)',
      'for line in sys.stdin:',
      '    i, tag = line.split()',
      `    m[int(i) * ${PAGE}:(int(i) + 1) * ${PAGE}] = tag.encode() * ${PAGE}`,
      '    print("ok", flush=True)',
    ].join('\n');
    const proc = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    const p = new PrivateMapper(proc, createInterface({ input: proc.stdout })[Symbol.asyncIterator]());
    await p.expect('ready');
    return p;
  }
  async write(i: number, tag: string): Promise<void> {
    this.proc.stdin.write(`${i} ${tag}\n`);
    await this.expect('ok');
  }
  private async expect(what: string): Promise<void> {
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    try {
      const r = await this.lines.next();
      assert.equal(r.value, what, 'the mapping process answers');
    } finally {
      clearTimeout(timer);
    }
  }
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = once(this.proc, 'exit');
    this.proc.stdin.end();
    this.proc.kill('SIGKILL');
    await exited;
  }
}
