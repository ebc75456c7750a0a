import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { pollUntil } from '@forky/base';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { startEphemeralHostd, type EphemeralHostd } from '@forky/hostd';
import { cliRunner } from '../helpers/cli-run.js';
import { testLogger } from '../helpers/hostd.js';
import { dockerSave, ociLayout, tar, type TarEntry } from '../helpers/oci-tar.js';
import { ensureImageOnce, IMAGE_CACHE_DIR, IMAGES_DIR, REPO } from '../helpers/repo.js';

const run = promisify(execFile);
const exists = (p: string): Promise<boolean> =>
  fs.lstat(p).then(
    () => true,
    () => false,
  );

interface Manifest {
  id: string;
  name: string;
  source: { format: string; sha256: string };
  parts: { disk: { virtualSize: number } };
}

/**
 * `forky image import` on tarballs this test writes itself (no registry, no docker): layer 1 has a
 * static program, a file layer 2 whites out and a directory layer 2 makes opaque. As an OCI layout
 * it boots under real QEMU and the program runs from the image's own PATH; as `docker save` and a
 * plain root it imports; hostile members are refused and write nothing outside.
 */
describe('forky image import: OCI layout, docker save, plain rootfs', { timeout: 300_000 }, () => {
  const marker = `FORKY-IMPORT-${randomBytes(6).toString('hex')}`;
  let work: string;
  let data: string;
  const { forky } = cliRunner(() => data);
  let nats: NatsServer | undefined;
  let hostd: EphemeralHostd | undefined;
  let nc: NatsConnection | undefined;
  let oci: string;
  const manifest = async (name: string): Promise<Manifest> =>
    JSON.parse(await fs.readFile(path.join(data, 'images', name, 'manifest.json'), 'utf8')) as Manifest;
  const write = async (file: string, b: Buffer): Promise<string> => {
    await fs.writeFile(path.join(work, file), b);
    return path.join(work, file);
  };
  const imp = (...args: string[]) => forky(['--json', 'image', 'import', ...args]);

  let layer1: Buffer;
  let layer2: Buffer;
  const env = ['PATH=/app/bin:/usr/bin', 'GREETING=hello from the image'];

  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-import-'));
    data = path.join(work, 'data');
    await fs.mkdir(path.join(data, 'images'), { recursive: true });
    await ensureImageOnce('tiny');
    // hostd's accelerator probe boots tiny; this run's probe result is reused.
    await fs.symlink(path.join(IMAGES_DIR, 'tiny'), path.join(data, 'images', 'tiny'));
    // Builds of this test are kept out of the machine's image cache (downloads are shared).
    const cache = path.join(work, 'cache');
    await fs.mkdir(cache);
    for (const d of ['debs', 'go']) await fs.symlink(path.join(IMAGE_CACHE_DIR, d), path.join(cache, d));
    process.env.FORKY_IMAGE_CACHE = cache;
    await fs.writeFile(path.join(work, 'hello.c'), `#include <stdio.h>\nint main(void){puts("${marker}");return 0;}\n`);
    await run('gcc', ['-static', '-Os', '-s', '-o', path.join(work, 'hello'), path.join(work, 'hello.c')]);
    const hello = await fs.readFile(path.join(work, 'hello'));
    layer1 = tar([
      { name: './', type: 'dir' },
      { name: './app/', type: 'dir' },
      { name: './app/bin/', type: 'dir' },
      { name: './app/bin/hello', data: hello, mode: 0o755 },
      { name: './etc/', type: 'dir' },
      { name: './etc/victim', data: 'to be whited out\n' },
      { name: './opq/', type: 'dir' },
      { name: './opq/old', data: 'lower\n' },
      { name: './gone/', type: 'dir' },
      { name: './gone/x', data: 'x\n' },
    ]);
    layer2 = tar([
      { name: './.wh.gone' },
      { name: './etc/', type: 'dir' },
      { name: './etc/.wh.victim' },
      { name: './opq/', type: 'dir' },
      { name: './opq/.wh..wh..opq' },
      { name: './opq/new', data: 'upper\n' },
    ]);
    oci = await write('oci.tar', ociLayout([layer1, layer2], { env }, { gzip: [false, true], nested: true }));
  });

  after(async () => {
    await hostd?.stop();
    await nc?.close();
    await nats?.stop();
    delete process.env.FORKY_IMAGE_CACHE;
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it('refuses a bad NAME and a missing FILE, writing nothing', async () => {
    const bad = await imp('Bad/Name', oci);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid image name/);
    const missing = await imp('imp-missing', path.join(work, 'nope.tar'));
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /no file/);
    assert.deepEqual((await fs.readdir(path.join(data, 'images'))).sort(), ['tiny']);
  });

  it('refuses a `../escape` member and a file through an absolute symlink; nothing lands outside', async () => {
    const tag = randomBytes(4).toString('hex');
    // A directory that a naive extraction would follow `etc -> TARGET` into.
    const target = path.join(os.tmpdir(), `fk-import-target-${tag}`);
    await fs.mkdir(target);
    try {
      const up = await write('up.tar', tar([{ name: `../fk-escape-${tag}`, data: 'x' }]));
      const r1 = await imp('imp-up', up);
      assert.equal(r1.code, 2, r1.stderr);
      assert.match(r1.stderr, /leaves the root/);
      const through = await write(
        'through.tar',
        ociLayout([tar([{ name: 'etc', type: 'symlink', target }]), tar([{ name: 'etc/pwned', data: 'pwned' } satisfies TarEntry])], {}),
      );
      const r2 = await imp('imp-through', through);
      assert.equal(r2.code, 2, r2.stderr);
      assert.match(r2.stderr, /goes through the symlink etc/);
      assert.deepEqual(await fs.readdir(target), []);
      for (const dir of [os.tmpdir(), '/dev/shm', '/', path.dirname(work)])
        assert.equal(await exists(path.join(dir, `fk-escape-${tag}`)), false);
      assert.equal(await exists(path.join(data, 'images', 'imp-up')), false);
      assert.equal(await exists(path.join(data, 'images', 'imp-through')), false);
    } finally {
      await fs.rm(target, { recursive: true, force: true });
    }
  });

  it('imports the OCI layout; again: skipped, same id; under another name: the same id (reproducible)', async (t) => {
    const t0 = performance.now();
    const r = await imp('imp-oci', oci);
    assert.equal(r.code, 0, r.stderr);
    t.diagnostic(`import of the OCI tarball: ${Math.round(performance.now() - t0)} ms`);
    const m = await manifest('imp-oci');
    assert.deepEqual(JSON.parse(r.stdout), { name: 'imp-oci', id: m.id, source: m.source });
    assert.equal(m.source.format, 'oci');
    assert.equal(m.parts.disk.virtualSize, 2 ** 30);
    const st = await fs.stat(path.join(data, 'images', 'imp-oci', 'manifest.json'));
    const again = await imp('imp-oci', oci);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).id, m.id);
    assert.equal((await fs.stat(path.join(data, 'images', 'imp-oci', 'manifest.json'))).mtimeMs, st.mtimeMs, 'second import skipped');
    assert.equal((await imp('imp-oci-b', oci)).code, 0);
    assert.equal((await manifest('imp-oci-b')).id, m.id);
    const sizes = await Promise.all(['vmlinuz', 'initrd.img', 'disk.qcow2'].map((f) => fs.stat(path.join(data, 'images', 'imp-oci', f))));
    t.diagnostic(`image parts: ${sizes.map((s) => `${(s.size / 2 ** 20).toFixed(1)} MiB`).join(' + ')}`);
  });

  it('imports the same layers from `docker save` and from a plain root tarball', async () => {
    const docker = await write('docker.tar', dockerSave([layer1, layer2], { env }));
    const r = await imp('imp-docker', docker);
    assert.equal(r.code, 0, r.stderr);
    const oc = await manifest('imp-oci');
    const dm = await manifest('imp-docker');
    assert.equal(dm.source.format, 'docker');
    // The same layers and environment: the same root, so the same image.
    assert.equal(dm.id, oc.id);
    const rootfs = await write('rootfs.tar.gz', gzipSync(layer1));
    const rr = await imp('imp-rootfs', rootfs);
    assert.equal(rr.code, 0, rr.stderr);
    const rm = await manifest('imp-rootfs');
    assert.equal(rm.source.format, 'rootfs');
    assert.notEqual(rm.id, oc.id);
  });

  it('boots the OCI import under QEMU: its program runs from its PATH, whiteouts and the opaque dir hold', async (t) => {
    nats = await startNatsServer();
    hostd = await startEphemeralHostd({
      natsUrl: nats.url,
      imagesDir: path.join(data, 'images'),
      logger: testLogger(),
      probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json'),
      overrides: { pool: { size: 0 } },
    });
    nc = await connect({ servers: nats.url });
    const client = new HostdClient(nc, hostd.hostId, { timeoutMs: 120_000 });
    const t0 = performance.now();
    const vm = await client.call('vm.boot', { image: 'imp-oci', memMiB: 256 });
    t.diagnostic(`boot of the imported image (TCG, agent answering): ${Math.round(performance.now() - t0)} ms`);
    const exec = (cmd: string[]) => client.call('vm.exec', { id: vm.id, cmd });
    const hello = await exec(['hello']);
    assert.equal(hello.exitCode, 0, hello.stderr);
    assert.equal(hello.stdout.trim(), marker);
    const envOut = (await exec(['/opt/forky/bin/env'])).stdout.split('\n');
    assert.ok(envOut.includes('PATH=/app/bin:/usr/bin'), envOut.join(' '));
    assert.ok(envOut.includes('GREETING=hello from the image'));
    const sh = await exec([
      '/opt/forky/bin/sh',
      '-c',
      'for f in /etc/victim /gone /opq/old /etc/forky/../victim; do [ ! -e $f ] || echo "present: $f"; done; ls -A /opq; find / -xdev -name ".wh.*"',
    ]);
    assert.equal(sh.exitCode, 0, sh.stderr);
    assert.equal(sh.stdout, 'new\n');
    // DHCP (the bundled udhcpc and its script, no shell of the image's) wrote the DNS server QEMU offers.
    const resolv = await pollUntil(
      async () => {
        const r = await exec(['/opt/forky/bin/cat', '/etc/resolv.conf']);
        return /^nameserver /m.test(r.stdout) ? r.stdout : undefined;
      },
      { timeoutMs: 30_000, maxIntervalMs: 500, what: 'a DHCP lease to write /etc/resolv.conf' },
    );
    assert.match(resolv, /^nameserver 10\.0\.2\.3$/m);
    await client.call('vm.destroy', { id: vm.id });
  });
});
