import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ForkyError, NotFoundError, ValidationError } from '@forky/base';
import { ImageCatalog } from '@forky/hostd/internal';
import { fileTree } from '../helpers/files.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const idOf = (k: string, i: string, d: string, cmdline: string): string =>
  `sha256:${sha(Buffer.from(`kernel:${k}\ninitrd:${i}\ndisk:${d}\ncmdline:${cmdline}\n`))}`;

interface Fixture {
  root: string;
  catalog: ImageCatalog;
  byIdDir: string;
  /** The parts "in the object store", by digest. */
  store: Map<string, Buffer>;
  downloads: string[];
  download: (digest: string, dest: string) => Promise<{ receivedBytes: number }>;
  block: (cmdline: string) => Parameters<ImageCatalog['install']>[0];
  disk: string;
  named: { id: string };
}

/** A named image `tiny` and parts of the same bytes in a store; by-id images under the data dir. */
async function fixture(t: TestContext): Promise<Fixture> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-imgcat-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  const kernel = randomBytes(3000);
  const initrd = randomBytes(2000);
  const diskBytes = randomBytes(1000);
  const named = path.join(root, 'images', 'tiny');
  await fs.mkdir(named, { recursive: true });
  await fs.writeFile(path.join(named, 'vmlinuz'), kernel);
  await fs.writeFile(path.join(named, 'initrd.img'), initrd);
  await fs.writeFile(path.join(named, 'disk.qcow2'), diskBytes);
  const part = (file: string, b: Buffer) => ({ file, sha256: sha(b), size: b.length });
  const id = idOf(sha(kernel), sha(initrd), sha(diskBytes), 'console=ttyS0');
  await fs.writeFile(
    path.join(named, 'manifest.json'),
    JSON.stringify({
      schema: 'forky.image/v1',
      name: 'tiny',
      id,
      cmdline: 'console=ttyS0',
      kernelVersion: '6.1',
      parts: {
        kernel: part('vmlinuz', kernel),
        initrd: part('initrd.img', initrd),
        disk: { ...part('disk.qcow2', diskBytes), virtualSize: 1 << 30 },
      },
    }),
  );
  // The base layer, as a fetch leaves it in the layers store.
  const disk = path.join(root, 'data', 'layers', 'img-base.qcow2');
  await fs.mkdir(path.dirname(disk), { recursive: true });
  await fs.writeFile(disk, diskBytes);
  const byIdDir = path.join(root, 'data', 'images', 'by-id');
  const store = new Map([kernel, initrd].map((b) => [sha(b), b]));
  const downloads: string[] = [];
  // Like the object store's download: verified by digest, then renamed into place.
  const download = async (digest: string, dest: string): Promise<{ receivedBytes: number }> => {
    downloads.push(digest);
    const b = store.get(digest);
    if (!b) throw new ForkyError('NOT_FOUND', `part ${digest} is not in the object store`);
    if (sha(b) !== digest) throw new ForkyError('INTERNAL', `part ${digest} arrived with digest ${sha(b)}`);
    await fs.writeFile(`${dest}.partial`, b);
    await fs.rename(`${dest}.partial`, dest);
    return { receivedBytes: b.length };
  };
  const block = (cmdline: string) => ({
    name: 'tiny',
    id: idOf(sha(kernel), sha(initrd), sha(diskBytes), cmdline),
    cmdline,
    kernel: { digest: sha(kernel), size: kernel.length },
    initrd: { digest: sha(initrd), size: initrd.length },
    disk: { digest: sha(diskBytes), size: diskBytes.length },
    diskVirtualSize: 1 << 30,
  });
  return {
    root,
    catalog: new ImageCatalog(path.join(root, 'images'), byIdDir),
    byIdDir,
    store,
    downloads,
    download,
    block,
    disk,
    named: { id },
  };
}

describe('image catalog: by-id images', () => {
  it('finds the named image by id, and nothing for an id it lacks', async (t) => {
    const f = await fixture(t);
    const img = await f.catalog.byId(f.named.id, 'tiny');
    assert.equal(img.stored, 'named');
    assert.equal(img.kernel, path.join(f.root, 'images', 'tiny', 'vmlinuz'));
    await assert.rejects(f.catalog.byId(f.block('other').id, 'tiny'), NotFoundError);
    // No name hint, or a name whose image is another build: the named image is not it.
    await assert.rejects(f.catalog.byId(f.named.id), NotFoundError);
  });

  it('installs an image by id from its parts, atomically, the disk a link of the base layer', async (t) => {
    const f = await fixture(t);
    const b = f.block('console=ttyS0 forky.variant=b');
    const got = await f.catalog.install(b, f.disk, f.download);
    assert.deepEqual([got.kernel.moved, got.initrd.moved], [true, true]);
    const img = await f.catalog.byId(b.id, 'tiny');
    assert.equal(img.stored, 'by-id', 'the named tiny is another build: the by-id entry is found');
    assert.equal(img.name, 'tiny');
    assert.equal(img.cmdline, b.cmdline);
    assert.ok(img.kernel.startsWith(f.byIdDir + path.sep));
    assert.equal(sha(await fs.readFile(img.kernel)), b.kernel.digest);
    assert.equal((await fs.stat(img.disk)).ino, (await fs.stat(f.disk)).ino, 'the disk is not copied');
    assert.deepEqual(await f.catalog.listById(), [b.id]);
    assert.deepEqual(await fs.readdir(f.byIdDir), [b.id.slice(7)], 'no temporary directory is left');
    // The named image is still what its name resolves to.
    assert.equal((await f.catalog.get('tiny')).id, f.named.id);
  });

  it('two installs of one image at once fetch its parts once', async (t) => {
    const f = await fixture(t);
    const b = f.block('x=1');
    const [one, two] = await Promise.all([f.catalog.install(b, f.disk, f.download), f.catalog.install(b, f.disk, f.download)]);
    assert.equal(f.downloads.length, 2, 'kernel and initrd, once each');
    assert.deepEqual([one.kernel.moved, two.kernel.moved].sort(), [false, true]);
    assert.equal((await f.catalog.byId(b.id)).id, b.id);
  });

  it('a part whose bytes do not match its digest fails typed and leaves no by-id directory', async (t) => {
    const f = await fixture(t);
    const b = f.block('x=2');
    f.store.set(b.initrd.digest, randomBytes(2000));
    const err = await f.catalog.install(b, f.disk, f.download).catch((e: unknown) => e);
    assert.ok(err instanceof ForkyError);
    assert.equal(err.name, 'ImageFetchError');
    assert.equal(err.details?.field, 'image.initrd');
    assert.deepEqual(await fileTree(f.byIdDir), [], 'nothing of the image is left');
    await assert.rejects(f.catalog.byId(b.id), NotFoundError);
  });

  it('a part of another size than the manifest says is refused', async (t) => {
    const f = await fixture(t);
    const b = f.block('x=3');
    b.kernel.size += 1;
    const err = await f.catalog.install(b, f.disk, f.download).catch((e: unknown) => e);
    assert.ok(err instanceof ForkyError && err.details?.field === 'image.kernel.size', String(err));
    assert.deepEqual(await fileTree(f.byIdDir), []);
  });

  it('a hostile id or name cannot reach outside the by-id directory', async (t) => {
    const f = await fixture(t);
    for (const id of ['sha256:../../../etc', '../../etc/passwd', 'sha256:' + 'a'.repeat(63) + '/', '', 'sha256:' + 'A'.repeat(64)]) {
      const err = await f.catalog.byId(id, '../images/tiny').catch((e: unknown) => e);
      assert.ok(err instanceof ValidationError && err.details?.field === 'imageId', `${id}: ${String(err)}`);
      await assert.rejects(f.catalog.install({ ...f.block('y'), id }, f.disk, f.download), ValidationError);
    }
    // A hostile name hint is no name: the lookup falls through to by-id and finds nothing.
    await assert.rejects(f.catalog.byId(f.named.id, '../../images/tiny'), NotFoundError);
    assert.deepEqual(f.downloads, [], 'nothing was fetched');
    assert.deepEqual(await fileTree(path.join(f.root, 'data', 'images')), []);
  });

  it('collects by-id images nothing refers to, but not pinned ones, nor named images', async (t) => {
    const f = await fixture(t);
    const a = f.block('a');
    const b = f.block('b');
    const c = f.block('c');
    for (const x of [a, b, c]) await f.catalog.install(x, f.disk, f.download);
    await fs.mkdir(path.join(f.byIdDir, `.tmp-${a.id.slice(7)}-0badc0de`));
    const unpin = f.catalog.pin(c.id);
    const gone = await f.catalog.collect((id) => id === a.id || id === f.named.id);
    assert.deepEqual(gone, [b.id]);
    assert.deepEqual((await fs.readdir(f.byIdDir)).sort(), [a.id.slice(7), c.id.slice(7)].sort(), 'the leftover temporary is gone');
    unpin();
    assert.deepEqual((await f.catalog.collect(() => false)).sort(), [a.id, c.id].sort());
    assert.equal((await f.catalog.get('tiny')).id, f.named.id, 'the named image is untouched');
  });

  it('keeps a named image by id when it is used, as links, and finds it by that id after the name is rebuilt', async (t) => {
    const f = await fixture(t);
    const named = path.join(f.root, 'images', 'tiny');
    const img = await f.catalog.get('tiny');
    assert.equal(img.stored, 'named');
    const kept = path.join(f.byIdDir, f.named.id.slice(7));
    for (const file of ['vmlinuz', 'initrd.img', 'disk.qcow2'])
      assert.equal((await fs.stat(path.join(kept, file))).ino, (await fs.stat(path.join(named, file))).ino, `${file} is a link`);
    await f.catalog.get('tiny');
    assert.deepEqual(await fs.readdir(f.byIdDir), [f.named.id.slice(7)], 'once per id, no temporary left');
    const rebuilt = await rebuild(named);
    assert.equal((await f.catalog.get('tiny')).id, rebuilt);
    const old = await f.catalog.byId(f.named.id, 'tiny');
    assert.equal(old.stored, 'by-id');
    assert.equal(old.kernel, path.join(kept, 'vmlinuz'));
    assert.equal(sha(await fs.readFile(old.disk)), old.parts.disk.sha256);
    // The copy of the name's current image stays though nothing records it yet (a boot may be about to).
    assert.deepEqual(await f.catalog.collect(() => false), [f.named.id]);
    assert.deepEqual(await f.catalog.listById(), [rebuilt]);
  });

  it('a named image that cannot be kept by id fails typed and leaves nothing', async (t) => {
    const f = await fixture(t);
    await fs.rm(path.join(f.root, 'images', 'tiny', 'initrd.img'));
    const err = await f.catalog.get('tiny').catch((e: unknown) => e);
    assert.ok(err instanceof ForkyError && err.details?.field === 'image', String(err));
    assert.deepEqual(await fileTree(f.byIdDir), []);
  });

  it('an image whose record is kept while collection runs is not removed', async (t) => {
    const f = await fixture(t);
    const b = f.block('fetched');
    const records = new Set<string>();
    // A fetch: pinned, installed, then recorded and unpinned while collect reads the directory.
    const unpin = f.catalog.pin(b.id);
    await f.catalog.install(b, f.disk, f.download);
    const collecting = f.catalog.collect((id) => records.has(id));
    records.add(b.id);
    unpin();
    assert.deepEqual(await collecting, []);
    assert.equal((await f.catalog.byId(b.id, 'tiny')).stored, 'by-id');
    records.delete(b.id);
    assert.deepEqual(await f.catalog.collect((id) => records.has(id)), [b.id], 'gone once its record is');
  });

  it('collection does not wait for an install that is downloading', { timeout: 20_000 }, async (t) => {
    const f = await fixture(t);
    const b = f.block('slow');
    let release = (): void => undefined;
    const stalled = new Promise<void>((r) => (release = r));
    let started = (): void => undefined;
    const downloading = new Promise<void>((r) => (started = r));
    const slow = async (digest: string, dest: string): Promise<{ receivedBytes: number }> => {
      started();
      await stalled;
      return f.download(digest, dest);
    };
    const installing = f.catalog.install(b, f.disk, slow);
    await downloading;
    const leftover = path.join(f.byIdDir, `.tmp-${f.block('dead').id.slice(7)}-0badc0de`);
    await fs.mkdir(leftover);
    // Returns while the download is held: the install's own temporary directory is passed by.
    assert.deepEqual(await f.catalog.collect(() => false), []);
    assert.equal(await fs.stat(leftover).catch(() => undefined), undefined, "a dead install's leftover is removed");
    const own = (await fs.readdir(f.byIdDir)).filter((n) => n.startsWith(`.tmp-${b.id.slice(7)}-`));
    assert.equal(own.length, 1, 'the install in progress keeps its directory');
    release();
    await installing;
    assert.equal((await f.catalog.byId(b.id)).id, b.id);
  });
});

/** Rewrites a named image's manifest as a rebuild would (another id, the dir renamed into place); says the new id. */
async function rebuild(dir: string): Promise<string> {
  const m = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as { id: string };
  m.id = `sha256:${sha(Buffer.from(m.id + ' rebuilt'))}`;
  await fs.writeFile(path.join(dir, 'manifest.json.new'), JSON.stringify(m));
  await fs.rename(path.join(dir, 'manifest.json.new'), path.join(dir, 'manifest.json'));
  return m.id;
}
