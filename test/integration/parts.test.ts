import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { DeadlineError } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { ObjectPartStore } from '@forky/bus';

const sha = async (f: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(f))
    .digest('hex');

describe('snapshot parts in the JetStream object store (real nats-server)', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let store: ObjectPartStore;
  let dir: string;
  let sparse: string;
  let dense: string;

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    store = await ObjectPartStore.open(nc);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fkparts-'));
    // 8 MiB with two islands of data: a RAM file's shape.
    sparse = path.join(dir, 'sparse.bin');
    const fh = await fs.open(sparse, 'w');
    await fh.truncate(8 << 20);
    await fh.write(randomBytes(100_000), 0, 100_000, 1 << 20);
    await fh.write(randomBytes(5000), 0, 5000, (8 << 20) - 5000);
    await fh.close();
    dense = path.join(dir, 'dense.bin');
    await fs.writeFile(dense, randomBytes(3 << 20));
  });

  after(async () => {
    await nc.close();
    await nats.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('sends only the chunks that are not zero, and a part already there not at all', async () => {
    const up = await store.upload(sparse);
    assert.equal(up.size, 8 << 20);
    assert.ok(up.sentBytes < 300_000, `sent ${up.sentBytes} bytes of an 8 MiB file that is mostly zeros`);
    assert.equal(up.digest, await sha(sparse));
    const again = await store.upload(sparse);
    assert.deepEqual({ skipped: again.skipped, sent: again.sentBytes }, { skipped: true, sent: 0 });
  });

  it('fetches a part, verifies it, and puts it in place whole', async () => {
    const up = await store.upload(dense);
    const dest = path.join(dir, 'out', 'dense.bin');
    const r = await store.download(up.digest, dest, 20_000);
    assert.ok(r.receivedBytes >= 3 << 20);
    assert.equal(await sha(dest), up.digest);
    const s = await store.upload(sparse);
    const dest2 = path.join(dir, 'out', 'sparse.bin');
    await store.download(s.digest, dest2, 20_000);
    assert.equal(await sha(dest2), s.digest);
    assert.ok((await fs.stat(dest2)).blocks * 512 < 1 << 20, 'the rebuilt file is sparse');
  });

  it('a transfer that runs out of time leaves no half part behind', async () => {
    const big = path.join(dir, 'big.bin');
    await fs.writeFile(big, randomBytes(16 << 20));
    const up = await store.upload(big);
    const dest = path.join(dir, 'out', 'big.bin');
    await assert.rejects(store.download(up.digest, dest, 1), DeadlineError);
    assert.deepEqual(
      (await fs.readdir(path.join(dir, 'out'))).filter((f) => f.startsWith('big')),
      [],
      'neither the part nor a .partial',
    );
  });

  it('sweeps parts no manifest refers to, but never young ones', async () => {
    const a = await store.upload(sparse);
    const b = await store.upload(dense);
    await store.putManifest('snap-aaaaaaaaaaaa', { chain: [], state: { digest: a.digest }, ram: { digest: a.digest } });
    assert.equal((await store.sweep(60_000)).deleted, 0, 'young parts are kept');
    const swept = await store.sweep(0);
    assert.ok(swept.deleted >= 1);
    assert.equal(await store.has(b.digest), false, 'the unreferenced part is gone');
    assert.equal(await store.has(a.digest), true, 'the referenced part stays');
    await store.deleteManifest('snap-aaaaaaaaaaaa');
    await store.sweep(0);
    assert.equal(await store.has(a.digest), false, 'gone once no manifest refers to it');
  });

  it("keeps the image's kernel and initrd and the app layers a manifest names", async () => {
    const files = await Promise.all(
      ['k', 'i', 'app'].map(async (n) => {
        const f = path.join(dir, `${n}.bin`);
        await fs.writeFile(f, randomBytes(70_000));
        return store.upload(f);
      }),
    );
    const [k, i, app] = files as [(typeof files)[0], (typeof files)[0], (typeof files)[0]];
    await store.putManifest('snap-bbbbbbbbbbbb', {
      chain: [],
      state: { digest: k.digest },
      ram: { digest: k.digest },
      image: { kernel: { digest: k.digest }, initrd: { digest: i.digest } },
      apps: [{ slot: 0, layer: app.digest, size: app.size }],
    });
    await store.sweep(0);
    for (const p of [k, i, app]) assert.equal(await store.has(p.digest), true);
    await store.deleteManifest('snap-bbbbbbbbbbbb');
    await store.sweep(0);
    for (const p of [k, i, app]) assert.equal(await store.has(p.digest), false);
  });
});
