import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { ObjectPartStore, startNatsServer, type NatsServer } from '@forky/bus';
import type { SnapshotInfo, TransferResult, VmInfo } from '@forky/contract';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { refused } from '../helpers/errors.js';
import { IMAGES_DIR, ensureImageOnce } from '../helpers/repo.js';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const shaFile = async (f: string): Promise<string> => sha(await fs.readFile(f));

/** Image `name` in `dir`: tiny's parts (hard links) with its cmdline and id changed as build-recipe.sh would make them. */
async function variant(dir: string, name: string, extra: string): Promise<{ id: string; manifest: string }> {
  const src = path.join(IMAGES_DIR, 'tiny');
  const m = JSON.parse(await fs.readFile(path.join(src, 'manifest.json'), 'utf8')) as {
    name: string;
    id: string;
    cmdline: string;
    parts: Record<'kernel' | 'initrd' | 'disk', { sha256: string }>;
  };
  const out = path.join(dir, name);
  await fs.mkdir(out, { recursive: true });
  for (const f of ['vmlinuz', 'initrd.img', 'disk.qcow2']) await fs.link(path.join(src, f), path.join(out, f));
  m.name = name;
  m.cmdline = `${m.cmdline} ${extra}`;
  const { kernel, initrd, disk } = m.parts;
  m.id = `sha256:${sha(`kernel:${kernel.sha256}\ninitrd:${initrd.sha256}\ndisk:${disk.sha256}\ncmdline:${m.cmdline}\n`)}`;
  const manifest = path.join(out, 'manifest.json');
  await fs.writeFile(manifest, JSON.stringify(m, null, 2));
  return { id: m.id, manifest };
}

describe('images travel with their snapshots, by id', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let store: ObjectPartStore;
  let a: TestHost;
  let b: TestHost;
  let dirA: string;
  let dirB: string;
  let tinyB: { id: string; manifest: string };
  let parent: VmInfo;
  const byIdOf = (id: string): string => path.join(b.dataDir, 'images', 'by-id', id.slice('sha256:'.length));
  const shB = () => guestShell((id, cmd) => b.client.call('vm.exec', { id, cmd }));

  /** Snapshot the parent on A and publish it; fetch it on B. */
  const ship = async (): Promise<{ snap: SnapshotInfo; fetched: TransferResult }> => {
    const snap = await a.client.call('snapshot.create', { vm: parent.id, resume: true });
    await a.client.call('snapshot.publish', { id: snap.id });
    return { snap, fetched: await b.client.call('snapshot.fetch', { id: snap.id }) };
  };

  /** A child of `snap` on B: it runs the snapshot's own kernel file (by id), and the guest is the parent's. */
  const childOnB = async (snap: SnapshotInfo): Promise<VmInfo> => {
    const r = await b.client.call('fork', { source: snap.id, count: 1 });
    const child = r.children[0] as VmInfo;
    assert.equal(child.host, b.hostId);
    assert.match(await shB()(child.id, 'cat /proc/cmdline'), /forky\.variant=b/);
    const args = (await fs.readFile(`/proc/${child.pid}/cmdline`, 'utf8')).split('\0');
    assert.equal(args[args.indexOf('-kernel') + 1], path.join(byIdOf(tinyB.id), 'vmlinuz'), 'QEMU runs the by-id kernel');
    return child;
  };

  before(async () => {
    await ensureImageOnce();
    dirA = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-imgA-'));
    dirB = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-imgB-'));
    // Hard links, not a copy: the images dir and the temp dirs share a filesystem.
    for (const d of [dirA, dirB]) {
      await fs.mkdir(path.join(d, 'tiny'));
      for (const f of await fs.readdir(path.join(IMAGES_DIR, 'tiny')))
        await fs.link(path.join(IMAGES_DIR, 'tiny', f), path.join(d, 'tiny', f));
    }
    tinyB = await variant(dirA, 'tiny-b', 'forky.variant=b');
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    store = await ObjectPartStore.open(nc);
    a = await startTestHost(nats.url, { hostId: 'it-a', overrides: { imagesDir: dirA } });
    b = await startTestHost(nats.url, { hostId: 'it-b', overrides: { imagesDir: dirB } });
    parent = await a.client.call('vm.boot', { image: 'tiny-b' });
  });

  after(async () => {
    await b?.stop();
    await a?.stop();
    await nc?.close();
    await nats?.stop();
    for (const d of [dirA, dirB]) if (d) await fs.rm(d, { recursive: true, force: true });
  });

  it('(a) a host without the image fetches its parts; a second snapshot of it moves no image byte', async () => {
    const one = await ship();
    // img + top layer, state, RAM, kernel, initrd: B had none of them.
    assert.deepEqual([one.fetched.parts, one.fetched.moved], [6, 6], JSON.stringify(one.fetched));
    const kernel = path.join(byIdOf(tinyB.id), 'vmlinuz');
    assert.equal(await shaFile(kernel), await shaFile(path.join(IMAGES_DIR, 'tiny', 'vmlinuz')));
    await childOnB(one.snap);
    const before = await fs.stat(kernel);

    const two = await ship();
    // Its new layer, state and RAM moved; the image (kernel, initrd, base) and the first layer did not.
    assert.deepEqual([two.fetched.parts, two.fetched.moved], [7, 3], JSON.stringify(two.fetched));
    const after = await fs.stat(kernel);
    assert.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs], 'the by-id image was not written again');
    await childOnB(two.snap);

    // Once B holds nothing made from it, its by-id copy goes.
    for (const s of [two.snap, one.snap]) await b.client.call('snapshot.delete', { id: s.id, cascade: true });
    await assert.rejects(fs.stat(byIdOf(tinyB.id)), { code: 'ENOENT' });
    assert.ok(await fs.stat(path.join(dirB, 'tiny', 'manifest.json')), 'the named images stay');
  });

  it('(b) a host with another build under the same name runs the snapshot’s bytes and keeps its own', async () => {
    const own = await variant(dirB, 'tiny-b', 'forky.variant=c');
    assert.notEqual(own.id, tinyB.id);
    const sum = await shaFile(own.manifest);
    await assert.rejects(fs.stat(byIdOf(tinyB.id)), { code: 'ENOENT' });
    const { snap, fetched } = await ship();
    assert.ok(fetched.moved >= 3 && fetched.bytes > 0, JSON.stringify(fetched));
    const child = await childOnB(snap);
    assert.equal(child.image, 'tiny-b');
    assert.equal(await shaFile(own.manifest), sum, "B's own tiny-b is untouched");
    assert.deepEqual((await b.client.call('host.info', {})).images, ['tiny', 'tiny-b']);
  });

  it('(c) a manifest whose image does not match its parts is refused, and leaves no by-id directory', async () => {
    const snap = await a.client.call('snapshot.create', { vm: parent.id, resume: true });
    await a.client.call('snapshot.publish', { id: snap.id });
    const m = (await store.getManifest(snap.id)) as {
      snapshot: SnapshotInfo;
      image: {
        id: string;
        cmdline: string;
        kernel: { digest: string; size: number };
        initrd: { digest: string };
        disk: { digest: string };
      };
    };
    const byIdRoot = path.join(b.dataDir, 'images', 'by-id');
    const listing = async (): Promise<string[]> => (await fs.readdir(byIdRoot).catch(() => [] as string[])).sort();
    const was = await listing();

    // A block whose id its parts do not make: refused before anything is fetched.
    const forged = `snap-${randomBytes(6).toString('hex')}`;
    const lie = structuredClone(m);
    lie.snapshot.id = forged;
    lie.image.cmdline += ' forky.variant=z';
    await store.putManifest(forged, lie);
    const e1 = await refused(b.client.call('snapshot.fetch', { id: forged }));
    assert.equal(e1.code, 'BAD_REQUEST');
    assert.match(e1.message, /image\.id/);

    // An old-style manifest (no image block) naming a hostile image id: no path is built from it.
    const hostile = structuredClone(m) as Partial<typeof m> & { snapshot: SnapshotInfo };
    const escaping = `snap-${randomBytes(6).toString('hex')}`;
    hostile.snapshot.id = escaping;
    hostile.snapshot.profile.imageId = 'sha256:../../../../etc';
    delete hostile.image;
    await store.putManifest(escaping, hostile);
    const e0 = await refused(b.client.call('snapshot.fetch', { id: escaping }));
    assert.equal(e0.code, 'BAD_REQUEST');
    assert.match(e0.message, /invalid image id/);

    // A consistent block whose kernel part holds other bytes than its digest: caught as it arrives.
    const fake = path.join(dirB, 'fake-kernel');
    await fs.writeFile(fake, randomBytes(64 * 1024));
    const claimed = sha(randomBytes(32));
    await store.upload(fake, { digest: claimed, size: 64 * 1024 });
    const bad = structuredClone(m);
    const tampered = `snap-${randomBytes(6).toString('hex')}`;
    bad.snapshot.id = tampered;
    bad.image.kernel = { digest: claimed, size: 64 * 1024 };
    const { initrd, disk, cmdline } = bad.image;
    bad.image.id = `sha256:${sha(`kernel:${claimed}\ninitrd:${initrd.digest}\ndisk:${disk.digest}\ncmdline:${cmdline}\n`)}`;
    bad.snapshot.profile.imageId = bad.image.id;
    await store.putManifest(tampered, bad);
    const e2 = await refused(b.client.call('snapshot.fetch', { id: tampered }));
    assert.match(e2.message, /its kernel .* could not be fetched: .*arrived with digest/);
    assert.deepEqual(await listing(), was, 'no by-id directory, whole or partial, was left');
    await refused(b.client.call('snapshot.show', { id: tampered }));
  });
});
