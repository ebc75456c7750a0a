import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildProgram, type CliStream, type Session, type StreamChunk } from '@forky/cli';

/**
 * `forky cp VM:/dir ./local` with a hostile guest: its tar stream is whatever it likes. The CLI
 * extracts it with its own reader (services/cli/src/untar.ts), never a local tar.
 */

const VM = 'vm-aaaaaaaaaaaa';

class ExitError extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

function fakeStream(chunks: () => AsyncIterable<StreamChunk>): CliStream {
  return {
    [Symbol.asyncIterator]: () => chunks()[Symbol.asyncIterator](),
    write: async () => undefined,
    closeInput: async () => undefined,
    resize: () => undefined,
    cancel: () => undefined,
    close: () => undefined,
  };
}

interface Ran {
  stderr: string;
  code?: number;
}

/** `forky cp VM:/data/tree DST` where the guest's `tar -c` writes `tar` (in chunks of `chunk` bytes) and exits `exitCode`. */
async function cpOut(
  tar: Buffer,
  dst: string,
  o: { chunk?: number; exitCode?: number; stderr?: Buffer; noise?: { mib: number; arrayBuffers?: number } } = {},
): Promise<Ran> {
  const r: Ran = { stderr: '' };
  const chunks: StreamChunk[] = [];
  let seq = 1;
  if (o.stderr) chunks.push({ kind: 'stderr', seq: seq++, bytes: o.stderr });
  for (let i = 0; i < tar.length; i += o.chunk ?? 65536)
    chunks.push({ kind: 'stdout', seq: seq++, bytes: tar.subarray(i, i + (o.chunk ?? 65536)) });
  const endChunk: StreamChunk = { kind: 'end', seq: seq + (o.noise?.mib ?? 0), end: { ok: true, exitCode: o.exitCode ?? 0 } };
  const noise = o.noise;
  const mib = Buffer.alloc(1 << 20, 'n');
  async function* all(): AsyncIterable<StreamChunk> {
    yield* chunks;
    // The guest's stderr without end: what the CLI holds of it is measured before the end comes.
    for (let i = 0; noise && i < noise.mib; i++) yield { kind: 'stderr', seq: seq + i, bytes: mib };
    if (noise) noise.arrayBuffers = process.memoryUsage().arrayBuffers;
    yield endChunk;
  }
  const session: Session = {
    call: async () => ({ stat: { type: 'dir', size: 0, mode: 0o755 } }) as never,
    uploadApps: async () => [],
    raw: async () => undefined,
    stream: async () => fakeStream(all),
    close: async () => undefined,
  };
  const text = (s: string | Uint8Array): string => (typeof s === 'string' ? s : Buffer.from(s).toString('latin1'));
  // Only stderr: the test runner reports on stdout (cp without --json prints nothing there).
  const writeErr = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string | Uint8Array) => ((r.stderr += text(s)), true)) as typeof process.stderr.write;
  try {
    const program = buildProgram({
      openSession: async () => session,
      exit: (code) => {
        throw new ExitError(code);
      },
    });
    await program.parseAsync(['node', 'forky', 'cp', `${VM}:/data/tree`, dst]);
  } catch (e) {
    if (!(e instanceof ExitError)) throw e;
    r.code = e.code;
  } finally {
    process.stderr.write = writeErr;
  }
  return r;
}

interface Entry {
  name: string;
  type?: string;
  mode?: number;
  link?: string;
  data?: Buffer | string;
  prefix?: string;
  magic?: 'ustar' | 'gnu';
}

/** One tar entry: a header block (checksum right) and its data, padded to 512. */
function entry(e: Entry): Buffer {
  const data = Buffer.from(e.data ?? '');
  const h = Buffer.alloc(512);
  h.write(e.name, 0, 100, 'utf8');
  h.write(`${(e.mode ?? 0o644).toString(8).padStart(7, '0')}\0`, 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124);
  h.write('00000000000\0', 136);
  h.write(e.type ?? '0', 156);
  h.write(e.link ?? '', 157, 100, 'utf8');
  h.write((e.magic ?? 'ustar') === 'ustar' ? 'ustar\x0000' : 'ustar  \0', 257, 'latin1');
  if (e.prefix) h.write(e.prefix, 345, 155);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return Buffer.concat([h, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

const tarOf = (...entries: Entry[]): Buffer => Buffer.concat([...entries.map(entry), Buffer.alloc(1024)]);

let tmp: string;
let n = 0;
/** A path that does not exist yet, in a directory of its own with a sibling `outside/` that must stay empty. */
const fresh = (): string => path.join(tmp, `case${++n}`, 'dst');

/** What is under `dir`, symlinks as `name -> target`, never walked through. */
function tree(dir: string, rel = ''): string[] {
  if (!fs.existsSync(path.join(dir, rel))) return [];
  return fs.readdirSync(path.join(dir, rel)).flatMap((name) => {
    const p = path.join(rel, name);
    const st = fs.lstatSync(path.join(dir, p));
    if (st.isSymbolicLink()) return [`${p} -> ${fs.readlinkSync(path.join(dir, p))}`];
    return st.isDirectory() ? [`${p}/`, ...tree(dir, p)] : [p];
  });
}

describe('cp VM:/dir ./local: a hostile guest tar stays inside a new directory', () => {
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fk-untar-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  afterEach(() => {
    process.exitCode = undefined;
  });

  it('extracts files, directories and relative symlinks, in chunks of any size', async () => {
    const tar = tarOf(
      { name: './', type: '5', mode: 0o755 },
      { name: './sub/', type: '5', mode: 0o700 },
      { name: './a.txt', data: 'alpha\n' },
      { name: './sub/b.txt', data: 'beta\n', mode: 0o600 },
      { name: './big', data: Buffer.alloc(70_000, 7) },
      { name: './l', type: '2', link: 'sub/b.txt' },
      { name: 'implicit/dir/c', data: 'c' },
    );
    for (const chunk of [65536, 3, 511, 513, 7919]) {
      const dst = fresh();
      const r = await cpOut(tar, dst, { chunk });
      assert.equal(r.code, undefined, r.stderr);
      assert.equal(fs.readFileSync(path.join(dst, 'sub', 'b.txt'), 'utf8'), 'beta\n');
      assert.equal(fs.readFileSync(path.join(dst, 'l'), 'utf8'), 'beta\n');
      assert.deepEqual(fs.readFileSync(path.join(dst, 'big')), Buffer.alloc(70_000, 7));
      assert.equal(fs.readFileSync(path.join(dst, 'implicit', 'dir', 'c'), 'utf8'), 'c');
      assert.equal(fs.statSync(path.join(dst, 'sub', 'b.txt')).mode & 0o777, 0o600);
    }
  });

  it('skips devices, FIFOs, hard links, absolute and .. names and symlinks, and says so escaped', async () => {
    const dst = fresh();
    const r = await cpOut(
      tarOf(
        { name: './blk', type: '4', mode: 0o666 },
        { name: './chr', type: '3', mode: 0o666 },
        { name: './fifo', type: '6' },
        { name: './hard', type: '1', link: './a' },
        { name: '../outside/up', data: 'x' },
        { name: 'a/../../outside/up2', data: 'x' },
        { name: '/abs/file', data: 'x' },
        { name: './esc', type: '2', link: '/etc' },
        { name: './dots', type: '2', link: 'x/../../outside' },
        { name: '../\x1b]52;c;aGk=\x07\nforged', data: 'x' },
        { name: './ok', data: 'ok' },
      ),
      dst,
    );
    assert.equal(r.code, undefined, r.stderr);
    assert.deepEqual(tree(dst), ['ok']);
    assert.deepEqual(tree(path.join(path.dirname(dst), 'outside')), []);
    assert.equal(r.stderr.match(/^# skipped /gm)?.length, 10, r.stderr);
    assert.match(r.stderr, /# skipped \.\.\/\\x1b\]52;c;aGk=\\x07\\x0aforged: a name with \.\./);
    assert.ok(!r.stderr.includes('\x1b') && !r.stderr.includes('\x07'), 'no raw ESC or BEL');
  });

  it('never follows a symlink, within the archive or planted by an earlier copy (the destination must be new)', async () => {
    const victim = path.join(tmp, 'victim');
    fs.mkdirSync(victim);
    fs.writeFileSync(path.join(victim, '.bashrc'), 'mine\n');
    const dst = fresh();
    // Run 1 would plant esc -> victim (absolute: skipped); relative links into the tree are kept but never walked through.
    const one = await cpOut(
      tarOf(
        { name: './esc', type: '2', link: victim },
        { name: './self', type: '2', link: '.' },
        { name: './self/self/x', data: 'x' },
        { name: './d', type: '5' },
        { name: './ld', type: '2', link: 'd' },
        { name: './ld/y', data: 'y' },
      ),
      dst,
    );
    assert.equal(one.code, undefined, one.stderr);
    assert.deepEqual(tree(dst).sort(), ['d/', 'ld -> d', 'self -> .']);
    assert.match(one.stderr, /# skipped \.\/self\/self\/x: a parent is not a directory/);
    // Run 2 into the same place: into dst/tree (dst is a directory), new; a third time: CONFLICT, nothing written.
    const attack = tarOf({ name: './esc/.bashrc', data: 'pwned\n' });
    const two = await cpOut(attack, dst);
    assert.equal(two.code, undefined, two.stderr);
    assert.equal(fs.readFileSync(path.join(dst, 'tree', 'esc', '.bashrc'), 'utf8'), 'pwned\n');
    const three = await cpOut(attack, dst);
    assert.equal(three.code, 1);
    assert.match(three.stderr, /^forky: CONFLICT: .*dst\/tree exists/);
    assert.equal(fs.readFileSync(path.join(victim, '.bashrc'), 'utf8'), 'mine\n');
    assert.deepEqual(fs.readdirSync(victim), ['.bashrc']);
  });

  it('keeps no setuid, setgid or sticky bit; a name twice is an error, not an overwrite', async () => {
    const dst = fresh();
    const r = await cpOut(
      tarOf({ name: './suid', mode: 0o4755, data: '#!/bin/sh\n' }, { name: './sticky/', type: '5', mode: 0o1777 }),
      dst,
    );
    assert.equal(r.code, undefined, r.stderr);
    assert.equal(fs.statSync(path.join(dst, 'suid')).mode & 0o7000, 0);
    assert.equal(fs.statSync(path.join(dst, 'sticky')).mode & 0o7000, 0);
    const dup = fresh();
    const d = await cpOut(tarOf({ name: './f', data: 'first' }, { name: './f', data: 'second' }), dup);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /^forky: CONFLICT: extracting f: EEXIST/);
    assert.equal(fs.readFileSync(path.join(dup, 'f'), 'utf8'), 'first');
  });

  it('takes GNU long names and pax headers (from GNU tar), and ustar prefixes', async () => {
    const src = path.join(tmp, 'src');
    const deep = path.join(src, 'd'.repeat(120), 'e'.repeat(120));
    fs.mkdirSync(deep, { recursive: true });
    fs.writeFileSync(path.join(deep, `${'f'.repeat(150)}.txt`), 'long\n');
    fs.symlinkSync(`${'e'.repeat(120)}/${'f'.repeat(150)}.txt`, path.join(src, 'd'.repeat(120), 'l'.repeat(110)));
    for (const format of ['gnu', 'pax', 'ustar']) {
      if (format === 'ustar') {
        const dst = fresh();
        const r = await cpOut(tarOf({ name: 'b.txt', prefix: 'p'.repeat(150), data: 'pre' }), dst);
        assert.equal(r.code, undefined, r.stderr);
        assert.equal(fs.readFileSync(path.join(dst, 'p'.repeat(150), 'b.txt'), 'utf8'), 'pre');
        continue;
      }
      const tar = execFileSync('tar', ['-C', src, `--format=${format}`, '-cf', '-', '.']);
      const dst = fresh();
      const r = await cpOut(tar, dst, { chunk: 1000 });
      assert.equal(r.code, undefined, `${format}: ${r.stderr}`);
      assert.equal(fs.readFileSync(path.join(dst, 'd'.repeat(120), 'l'.repeat(110)), 'utf8'), 'long\n', format);
    }
  });

  it('fails clearly on a bad checksum, a truncated stream, a huge long name or a failed guest tar (stderr bounded, escaped)', async () => {
    const good = tarOf({ name: './a', data: 'x'.repeat(1000) });
    const flipped = Buffer.from(good);
    flipped[10] = 0x41;
    const cases: Array<[Buffer, RegExp]> = [
      [flipped, /^forky: INCOMPATIBLE: the guest's tar stream: bad header checksum at byte 0/],
      [good.subarray(0, 700), /^forky: INCOMPATIBLE: the guest's tar stream: truncated at byte 700/],
      [good.subarray(0, 200), /^forky: INCOMPATIBLE: the guest's tar stream: truncated at byte 200/],
      [tarOf({ name: '././@LongLink', type: 'L', data: Buffer.alloc(70_000, 0x61) }), /a L header of 70000 bytes \(at most 65536\)/],
      [Buffer.from('hello world\n'.repeat(100)), /INCOMPATIBLE/],
    ];
    for (const [tar, re] of cases) {
      const r = await cpOut(tar, fresh());
      assert.equal(r.code, 1);
      assert.match(r.stderr, re);
    }
    const noisy = Buffer.concat([Buffer.alloc(1 << 20, 'x'), Buffer.from('\x1b[2Jtar: /data/tree: Permission denied\n')]);
    const r = await cpOut(good, fresh(), { exitCode: 1, stderr: noisy });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^forky: INVALID_STATE: tar -c in the guest exited 1: x+\\x1b\[2Jtar: \/data\/tree: Permission denied\n$/);
    assert.ok(r.stderr.length < 4200, `the guest's stderr is cut to its last 4000 bytes, not ${r.stderr.length}`);
  });

  it("holds only the end of the guest tar's stderr, however much it writes", async () => {
    const base = process.memoryUsage().arrayBuffers;
    const noise = { mib: 300 } as { mib: number; arrayBuffers?: number };
    const r = await cpOut(tarOf({ name: './a', data: 'a' }), fresh(), { exitCode: 2, noise });
    const held = ((noise.arrayBuffers ?? 0) - base) / 2 ** 20;
    assert.ok(held < 100, `300 MiB of stderr held ${held.toFixed(0)} MiB`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^forky: INVALID_STATE: tar -c in the guest exited 2: n{4000}\n$/);
  });

  it('fuzz: random bytes and truncations give a coded error or a tree inside the destination, never a throw', async () => {
    const good = tarOf(
      { name: './sub/', type: '5' },
      { name: './sub/f', data: 'f'.repeat(600) },
      { name: './l', type: '2', link: 'sub' },
      { name: './g', data: 'g' },
    );
    let seed = 42;
    const rnd = (k: number): number => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % k;
    for (let i = 0; i < 300; i++) {
      const t = Buffer.from(good);
      for (let j = rnd(4); j >= 0; j--)
        t[rnd(t.length)] = [0, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x35, 0x36, 0x4c, 0x78, 0xff][rnd(11)] as number;
      // Half keep their checksums right, so the mutation reaches past the header check.
      if (i % 2 === 0)
        for (let off = 0; off + 512 <= t.length; off += 512) {
          const h = t.subarray(off, off + 512);
          if (h.subarray(257, 262).toString() !== 'ustar') continue;
          h.fill(0x20, 148, 156);
          let sum = 0;
          for (const x of h) sum += x;
          h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
        }
      const dst = fresh();
      const r = await cpOut(i % 3 === 0 ? t.subarray(0, rnd(t.length)) : t, dst, { chunk: 1 + rnd(2000) });
      if (r.code !== undefined) {
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /^(# skipped .*\n)*forky: (INCOMPATIBLE|CONFLICT): [^\n]*\n$/, `case ${i}: ${r.stderr}`);
      }
      assert.deepEqual(tree(path.join(path.dirname(dst), 'outside')), [], `case ${i}`);
      assert.deepEqual(fs.readdirSync(path.dirname(dst)), ['dst'], `case ${i}`);
    }
  });
});
