import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { ForkyError, withDeadline } from '@forky/base';
import { ObjectPartStore, PARTS_BUCKET, startNatsServer, type NatsServer } from '@forky/bus';
import { PAGE } from '@forky/bus/internal';
import { filesOf, hostFor, type EngineHost } from '../helpers/engine-host.js';
import { refused } from '../helpers/errors.js';

const sha = async (f: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(f))
    .digest('hex');

/** A gate the test opens (or fails) by hand; `entered` resolves once a call is held at it. */
function gate(): { entered: Promise<void>; open: () => void; fail: (e: Error) => void; wait: () => Promise<void> } {
  let entered!: () => void;
  let open!: () => void;
  let fail!: (e: Error) => void;
  const e = new Promise<void>((r) => (entered = r));
  const g = new Promise<void>((r, j) => {
    open = r;
    fail = j;
  });
  g.catch(() => undefined);
  return { entered: e, open, fail, wait: () => (entered(), g) };
}

describe('publish early: one upload, fetches that wait for it (real nats-server, dry-run hosts)', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let raw: ObjectStore;
  const conns: NatsConnection[] = [];
  /** A real store, counting uploads; an armed gate holds the next upload until the test opens it. */
  const counted = async (): Promise<{ store: ObjectPartStore; uploads: string[]; hold: (g: ReturnType<typeof gate>) => void }> => {
    const c = await connect({ servers: nats.url });
    conns.push(c);
    const real = await ObjectPartStore.open(c, 1);
    const uploads: string[] = [];
    let held: ReturnType<typeof gate> | undefined;
    const store = new Proxy(real, {
      get(t, k) {
        const f = Reflect.get(t, k) as unknown;
        if (typeof f !== 'function') return f;
        if (k !== 'upload') return (f as (...a: unknown[]) => unknown).bind(t);
        return async (file: string, ...rest: unknown[]) => {
          uploads.push(file);
          const g = held;
          held = undefined;
          if (g) await g.wait();
          return (f as (...a: unknown[]) => Promise<unknown>).call(t, file, ...rest);
        };
      },
    });
    return { store, uploads, hold: (g) => (held = g) };
  };
  /** Host A with a snapshot whose RAM and state have data; host B on the same store. */
  async function pair(
    t: TestContext,
  ): Promise<{ a: EngineHost; b: EngineHost; id: string; ram: string; up: Awaited<ReturnType<typeof counted>> }> {
    const up = await counted();
    const a = await hostFor(t, { parts: up.store, hostId: 'h-a' });
    const c = await connect({ servers: nats.url });
    conns.push(c);
    const b = await hostFor(t, { parts: await ObjectPartStore.open(c, 1), hostId: 'h-b' });
    // The dry run's image files are opened only by a publish: give them bytes, and the image an id they make.
    const kernel = randomBytes(PAGE);
    const initrd = randomBytes(PAGE);
    const part = (file: string, b: Buffer) => ({ file, sha256: createHash('sha256').update(b).digest('hex'), size: b.length });
    const parts = {
      kernel: part('vmlinuz', kernel),
      initrd: part('initrd.img', initrd),
      disk: { ...part('disk.qcow2', Buffer.alloc(0)), virtualSize: 1 << 30 },
    };
    const cmdline = 'console=ttyS0';
    const made = `kernel:${parts.kernel.sha256}\ninitrd:${parts.initrd.sha256}\ndisk:${parts.disk.sha256}\ncmdline:${cmdline}\n`;
    const manifest = {
      schema: 'forky.image/v1',
      name: 'tiny',
      id: `sha256:${createHash('sha256').update(made).digest('hex')}`,
      cmdline,
      kernelVersion: 'test',
      parts,
    };
    for (const h of [a, b]) {
      const img = path.join(path.dirname(h.dataDir), 'images', 'tiny');
      await fs.writeFile(path.join(img, 'vmlinuz'), kernel);
      await fs.writeFile(path.join(img, 'initrd.img'), initrd);
      await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify(manifest));
    }
    const vm = await a.engine.boot({ image: 'tiny', memMiB: 256, cpus: 1, gpus: 0 } as never);
    const snap = await a.engine.snapshot({ vm: vm.id, resume: true });
    const files = a.snapshots.files(snap.id);
    await fs.writeFile(files.ram, randomBytes(64 * PAGE));
    await fs.writeFile(files.state, randomBytes(3 * PAGE));
    return { a, b, id: snap.id, ram: files.ram, up };
  }
  /** Resolves once `n` consumers were made on the parts stream (a fetch waiting makes two). */
  async function consumersMade(n: number): Promise<() => Promise<void>> {
    const sub = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.CREATED.OBJ_${PARTS_BUCKET}.>`, { max: n });
    await nc.flush();
    const seen = (async () => {
      for await (const _m of sub);
    })();
    return () => withDeadline(seen, 10_000, 'consumers of a waiting fetch');
  }

  /** An object of the store, unless none or deleted. */
  const live = async (name: string): Promise<unknown> => {
    const i = await raw.info(name);
    return i && !i.deleted ? i : null;
  };

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    await ObjectPartStore.open(nc, 1);
    raw = await new Objm(nc).open(PARTS_BUCKET);
  });
  after(async () => {
    for (const c of conns) await c.close();
    await nc.close();
    await nats.stop();
  });

  it('two concurrent publishes of one snapshot upload its parts once and get the same result', async (t) => {
    const { a, id, up } = await pair(t);
    const g = gate();
    up.hold(g);
    const first = a.engine.publish(id);
    await g.entered;
    const second = a.engine.publish(id);
    g.open();
    const [r1, r2] = await Promise.all([first, second]);
    assert.deepEqual(r2, r1, 'the second caller joined the first upload');
    assert.ok(r1.moved > 0 && r1.bytes > 0, 'the parts went up');
    assert.equal(up.uploads.length, new Set(up.uploads).size, `each part uploaded once: ${up.uploads.join(', ')}`);
    assert.equal(await live(`publishing.${id}`), null, 'no marker left');
    // Done, a new call starts afresh (finds everything there).
    const again = await a.engine.publish(id);
    assert.equal(again.moved, 0);
  });

  it('a fetch started during a publish waits for it and gets the hash-checked parts', async (t) => {
    const { a, b, id, ram, up } = await pair(t);
    const g = gate();
    up.hold(g);
    const publishing = a.engine.publish(id);
    await g.entered;
    assert.equal(await live(`manifest.${id}`), null, 'nothing published yet');
    const waiting = await consumersMade(2);
    const fetching = b.engine.fetch(id);
    await waiting();
    g.open();
    const [pub, got] = await Promise.all([publishing, fetching]);
    assert.ok(pub.moved > 0);
    assert.ok(got.moved > 0 && got.bytes > 0, 'the fetch brought the parts');
    assert.equal(await sha(b.snapshots.files(id).ram), await sha(ram), 'the RAM part arrived whole');
    const forked = await b.engine.fork({ source: id, count: 1 } as never);
    assert.equal(forked.children.length, 1, 'B forks the fetched snapshot');
  });

  it('a publish that fails fails the fetch waiting for it with a typed error, and leaves nothing', async (t) => {
    const { a, b, id, up } = await pair(t);
    const g = gate();
    up.hold(g);
    const publishing = a.engine.publish(id);
    await g.entered;
    const waiting = await consumersMade(2);
    const fetching = b.engine.fetch(id);
    await waiting();
    g.fail(new ForkyError('CAPACITY', 'store full'));
    const [pe, fe] = await Promise.all([refused(publishing), refused(fetching)]);
    assert.equal(fe.name, 'PublishFailedError');
    assert.equal(fe.code, pe.code, 'the fetch fails as the publish did');
    assert.match(fe.message, new RegExp(`${id}.*h-a`));
    assert.deepEqual(await filesOf(b, id), [], 'nothing of it on B');
    assert.equal(await live(`publishing.${id}`), null, 'no marker left');
    assert.equal(await live(`manifest.${id}`), null, 'no manifest');
    // Neither published nor under way: a fetch says so at once.
    assert.equal((await refused(b.engine.fetch(id))).code, 'NOT_FOUND');
    // The next publish starts afresh, and then the fetch works.
    await a.engine.publish(id);
    assert.ok((await b.engine.fetch(id)).moved > 0);
  });
});
