import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { SchedulerClient, startNatsServer, type NatsServer } from '@forky/bus';
import type { AppMount, VmInfo } from '@forky/contract';
import { uploadApps } from '@forky/cli';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { refused } from '../helpers/errors.js';

/** Every file under `dir` with its content's digest: "the host directory is untouched" is checked against this. */
async function treeDigest(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const e of (await fs.readdir(d, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      const st = await fs.lstat(p);
      h.update(`${path.relative(dir, p)} ${st.mode} ${st.mtimeMs}\n`);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) h.update(await fs.readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

describe('app-directory overlays: a host directory, read-only underneath, writable per VM, through forks', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let hostB: TestHost;
  let sched: TestScheduler;
  let nc: NatsConnection;
  let client: SchedulerClient;
  let appDir: string;
  let toolsDir: string;
  let app: AppMount;
  let parent: VmInfo;
  let children: VmInfo[] = [];
  const sh = guestShell((id, cmd) => client.call('vm.exec', { id, cmd }));

  before(async () => {
    await ensureImageOnce();
    appDir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-app-'));
    toolsDir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-tools-'));
    await fs.mkdir(path.join(appDir, 'bin'));
    await fs.writeFile(path.join(appDir, 'hello.txt'), 'v1\n');
    await fs.writeFile(path.join(appDir, 'bin', 'run.sh'), '#!/bin/sh\necho app says $(cat /opt/app/hello.txt)\n', { mode: 0o755 });
    await fs.writeFile(path.join(toolsDir, 'tool.txt'), 'a tool\n');
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'apps-a' });
    hostB = await startTestHost(nats.url, { hostId: 'apps-b' });
    sched = await startTestScheduler(nats.url);
    nc = await connect({ servers: nats.url });
    client = new SchedulerClient(nc, { timeoutMs: 300_000 });
  });

  after(async () => {
    await nc?.close();
    await sched?.stop();
    await host?.stop();
    await hostB?.stop();
    await nats?.stop();
    for (const d of [appDir, toolsDir]) if (d) await fs.rm(d, { recursive: true, force: true });
  });

  it('boots a VM with a directory packed into a layer; the guest sees it and runs from it', async (t) => {
    const t0 = performance.now();
    [app] = (await uploadApps(nc, [`${appDir}:/opt/app`])) as [AppMount];
    const packMs = performance.now() - t0;
    parent = await client.call('vm.boot', { apps: [app], host: 'apps-a', key: 'apps-boot' });
    assert.deepEqual(parent.apps, [app]);
    assert.equal((await sh(parent.id, '/opt/app/bin/run.sh')).trim(), 'app says v1');
    // Read-only underneath: the layer's own mount refuses writes; the overlay takes them.
    const lower = (await sh(parent.id, 'grep " /run/forky/apps/" /proc/mounts')).trim();
    assert.match(lower, / ro[, ]/);
    t.diagnostic(
      `packed and uploaded ${appDir} in ${Math.round(packMs)} ms (layer ${app.layer.slice(0, 12)}…); booted ${parent.id} with it`,
    );
  });

  it('3 children of a fork read the same app directory, each sees only its own writes, the host directory is untouched', async (t) => {
    const hostBefore = await treeDigest(appDir);
    await sh(parent.id, 'echo parent > /opt/app/parent.txt');
    const fork = await client.call('fork', { source: parent.id, count: 3, resumeParent: true, key: 'apps-fork' });
    children = fork.children;
    assert.equal(children.length, 3);
    for (const [i, c] of children.entries())
      await sh(c.id, `echo child-${i} > /opt/app/mine.txt && echo changed-${i} >> /opt/app/hello.txt`);
    for (const [i, c] of children.entries()) {
      assert.equal((await sh(c.id, 'cat /opt/app/mine.txt')).trim(), `child-${i}`);
      assert.equal(await sh(c.id, 'cat /opt/app/hello.txt'), `v1\nchanged-${i}\n`);
      // What the parent wrote before the fork is inherited; nothing after it leaks between siblings.
      assert.equal((await sh(c.id, 'cat /opt/app/parent.txt')).trim(), 'parent');
      assert.equal((await sh(c.id, 'ls /opt/app')).split('\n').filter(Boolean).sort().join(' '), 'bin hello.txt mine.txt parent.txt');
    }
    assert.equal(await sh(parent.id, 'cat /opt/app/hello.txt; ls /opt/app/mine.txt 2>/dev/null || echo none'), 'v1\nnone\n');
    assert.equal(await treeDigest(appDir), hostBefore, 'the host directory is untouched');
    const disks = await sh(children[0]?.id as string, 'ls /sys/block | tr "\\n" " "');
    t.diagnostic(
      `3 children of ${parent.id} share layer ${app.layer.slice(0, 12)}… (guest disks: ${disks.trim()}); each read back only its own write; host directory digest unchanged`,
    );
  });

  it('a changed directory reaches a running VM as a new layer, its own writes kept, the old layer unplugged', async (t) => {
    await fs.writeFile(path.join(appDir, 'hello.txt'), 'v2\n');
    await fs.writeFile(path.join(appDir, 'new.txt'), 'new\n');
    const [v2] = (await uploadApps(nc, [`${appDir}:/opt/app`])) as [AppMount];
    assert.notEqual(v2.layer, app.layer, 'a changed directory is a new layer');
    const t0 = performance.now();
    const after = await client.call('vm.app', { id: parent.id, apps: [v2], key: 'apps-update' });
    const swapMs = performance.now() - t0;
    assert.deepEqual(after.apps, [v2]);
    assert.equal((await sh(parent.id, '/opt/app/bin/run.sh')).trim(), 'app says v2');
    assert.equal((await sh(parent.id, 'cat /opt/app/new.txt /opt/app/parent.txt')).trim(), 'new\nparent');
    // The old layer's disk is gone from the guest: vda and one app disk remain.
    assert.equal((await sh(parent.id, 'ls -d /sys/block/vd* | wc -l')).trim(), '2');
    // The children keep the layer they were forked with.
    assert.equal(await sh(children[0]?.id as string, 'cat /opt/app/hello.txt'), 'v1\nchanged-0\n');
    app = v2;
    t.diagnostic(`layer swapped in the running ${parent.id} in ${Math.round(swapMs)} ms (hot-plug, overlay remount, old disk unplugged)`);
  });

  it('a VM whose layer was hot-plugged forks: children start with that disk and read the new layer', async () => {
    const fork = await client.call('fork', { source: parent.id, count: 2, resumeParent: true, key: 'apps-fork-2' });
    for (const c of fork.children) {
      assert.deepEqual(c.apps, [app]);
      assert.equal(await sh(c.id, 'cat /opt/app/hello.txt /opt/app/parent.txt'), 'v2\nparent\n');
      await sh(c.id, 'echo mine > /opt/app/x.txt');
    }
    children.push(...fork.children);
  });

  it('fork --app gives every child a further directory, mounted after restore', async () => {
    const [tools] = (await uploadApps(nc, [`${toolsDir}:/opt/tools`])) as [AppMount];
    const fork = await client.call('fork', { source: parent.id, count: 2, resumeParent: true, apps: [tools], key: 'apps-fork-3' });
    for (const c of fork.children) {
      assert.deepEqual(c.apps, [app, tools]);
      assert.equal(await sh(c.id, 'cat /opt/tools/tool.txt /opt/app/hello.txt'), 'a tool\nv2\n');
    }
    assert.equal(await sh(parent.id, 'ls /opt/tools 2>/dev/null || echo none'), 'none\n', 'the parent did not get it');
  });

  it('a layer travels with its snapshot: a child on another host reads it', async (t) => {
    const fork = await client.call('fork', { source: parent.id, count: 2, spread: true, resumeParent: true, key: 'apps-fork-spread' });
    const away = fork.children.filter((c) => c.host === 'apps-b');
    assert.ok(away.length > 0, `a child on apps-b: ${fork.children.map((c) => c.host).join(', ')}`);
    for (const c of away) assert.equal(await sh(c.id, 'cat /opt/app/hello.txt /opt/app/parent.txt'), 'v2\nparent\n');
    const there = await fs.readdir(path.join(hostB.dataDir, 'apps'));
    assert.ok(there.includes(`${app.layer}.ext4`), 'apps-b fetched the layer by its digest');
    t.diagnostic(
      `${away.length} child(ren) on apps-b read layer ${app.layer.slice(0, 12)}…, fetched from the object store with the snapshot`,
    );
  });

  it('refuses bad app requests with a typed error naming the field, and changes nothing', async () => {
    const before = await client.call('vm.show', { id: parent.id });
    const bad = async (body: Record<string, unknown>, code: string): Promise<void> => {
      const e = await refused(client.call('vm.app', { id: parent.id, ...body } as never));
      assert.equal(e.code, code, e.message);
      if (code === 'BAD_REQUEST') assert.match(e.message, /apps/);
    };
    await bad({ apps: [{ layer: app.layer, mount: '/opt/../etc' }] }, 'BAD_REQUEST');
    await bad({ apps: [{ layer: app.layer, mount: '/data/x' }] }, 'BAD_REQUEST');
    await bad({ apps: [{ layer: 'f'.repeat(64), mount: '/opt/other' }] }, 'NOT_FOUND');
    assert.deepEqual(await client.call('vm.show', { id: parent.id }), before);
    // A fork whose children's layer no store has is refused before the parent is snapshotted.
    const counts = async (): Promise<string> =>
      `${(await client.call('vm.list', {})).vms.length} ${(await client.call('snapshot.list', {})).snapshots.length}`;
    const was = await counts();
    const e = await refused(client.call('fork', { source: parent.id, count: 2, apps: [{ layer: 'f'.repeat(64), mount: '/opt/z' }] }));
    assert.equal(e.code, 'NOT_FOUND', e.message);
    assert.equal(await counts(), was, 'no snapshot, no child');
    assert.deepEqual(await client.call('vm.show', { id: parent.id }), before);
  });
});
