import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ForkyError, pollUntil } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import type { VmInfo } from '@forky/contract';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce, IMAGES_DIR } from '../helpers/repo.js';

const run = promisify(execFile);
const sha256 = async (file: string): Promise<string> =>
  createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');
const GiB = 2 ** 30;

/**
 * The `debian` image (images/debian/image.json, built by images/build-recipe.sh) under real QEMU:
 * its tools run, DNS comes from DHCP, its root is a copy-on-write disk per VM, `diskGiB` grows it.
 * hostd runs in TAP mode on a bridge of its own where dnsmasq is the DHCP server and the resolver,
 * so a name resolves through the server the lease named (and the egress filter lets DNS to it through).
 */
describe('the debian image: python, git, pip, DNS from DHCP, a root disk per VM, --disk', { timeout: 900_000 }, () => {
  const bridge = `fkbr${randomBytes(2).toString('hex')}`;
  const subnet = `10.${randomInt(100, 200)}.${randomInt(1, 250)}`;
  const resolver = `${subnet}.1`;
  // An address from TEST-NET-3: only our dnsmasq knows the name.
  const probeName = 'probe.forky.test';
  const probeAddr = '203.0.113.7';
  const marker = randomBytes(8).toString('hex');
  let work: string;
  let dnsmasq: ChildProcess | undefined;
  let nats: NatsServer;
  let host: TestHost;
  let baseSum: string;
  let big: VmInfo;
  let children: VmInfo[] = [];
  const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd }));
  /** `df -B1 /` in a guest: its size and free bytes. */
  const dfRoot = async (id: string): Promise<{ size: number; avail: number }> => {
    const [size, avail] = (await sh(id, 'df -B1 --output=size,avail / | tail -n 1')).trim().split(/\s+/).map(Number);
    return { size: size as number, avail: avail as number };
  };
  /** DHCP runs in the background after boot: wait for its lease to have written resolv.conf. */
  const leased = (id: string): Promise<string> =>
    pollUntil(async () => ((await sh(id, 'cat /etc/resolv.conf')).includes(resolver) ? sh(id, 'cat /etc/resolv.conf') : undefined), {
      timeoutMs: 60_000,
      what: `a DHCP lease with DNS in ${id}`,
    });

  before(async () => {
    await ensureImageOnce('tiny');
    await ensureImageOnce('debian');
    baseSum = await sha256(path.join(IMAGES_DIR, 'debian', 'disk.qcow2'));
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-deb-'));
    await run('ip', ['link', 'add', 'name', bridge, 'type', 'bridge']);
    await run('ip', ['addr', 'add', `${resolver}/24`, 'dev', bridge]);
    await run('ip', ['link', 'set', bridge, 'up']);
    // Debian's dnsmasq: DHCP on the bridge, naming itself the DNS server, and that DNS server.
    dnsmasq = spawn(
      'dnsmasq',
      [
        '--keep-in-foreground',
        '--conf-file=/dev/null',
        '--no-resolv',
        '--no-hosts',
        '--bind-interfaces',
        `--interface=${bridge}`,
        `--listen-address=${resolver}`,
        `--dhcp-range=${subnet}.100,${subnet}.200,255.255.255.0,1h`,
        `--dhcp-option=option:router,${resolver}`,
        `--dhcp-option=option:dns-server,${resolver}`,
        `--dhcp-leasefile=${work}/leases`,
        `--pid-file=${work}/dnsmasq.pid`,
        `--address=/${probeName}/${probeAddr}`,
        '--user=root',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    dnsmasq.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    await pollUntil(async () => ((await fs.stat(`${work}/dnsmasq.pid`).catch(() => undefined)) ? true : undefined), {
      timeoutMs: 10_000,
      what: `dnsmasq to start (${err})`,
    });
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { overrides: { network: { mode: 'tap', bridge, resolvers: [resolver] }, pool: { size: 0 } } });
  });

  after(async () => {
    await host?.stop();
    await nats?.stop();
    dnsmasq?.kill('SIGTERM');
    await run('ip', ['link', 'del', bridge]).catch(() => undefined);
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it('refuses a disk smaller than the image, naming diskGiB', async () => {
    await assert.rejects(host.client.call('vm.boot', { image: 'debian', diskGiB: 1 }), (e: unknown) => {
      assert.ok(e instanceof ForkyError);
      assert.equal(e.code, 'BAD_REQUEST');
      assert.match(e.message, /diskGiB/);
      return true;
    });
  });

  it('boots with --disk 4: the root file system grew to the disk', async (t) => {
    big = await host.client.call('vm.boot', { image: 'debian', memMiB: 512, diskGiB: 4 });
    assert.equal(big.state, 'running');
    const { size, avail } = await dfRoot(big.id);
    t.diagnostic(`--disk 4: df / ${size} bytes, ${avail} free`);
    assert.ok(size > 3.8 * GiB && size <= 4 * GiB, `df / size ${size}`);
    assert.ok(avail > 3.3 * GiB, `df / free ${avail}`);
    assert.match(await sh(big.id, 'grep " / " /proc/mounts'), /^\/dev\/vda \/ ext4 rw/);
  });

  it('forks it: a file written to / of one child is absent in its sibling; both keep the 4 GiB disk', async () => {
    children = (await host.client.call('fork', { source: big.id, count: 2 })).children;
    assert.equal(children.length, 2);
    const [a, b] = children as [VmInfo, VmInfo];
    await sh(a.id, `echo ${marker} > /marker && sync`);
    assert.equal((await sh(a.id, 'cat /marker')).trim(), marker);
    assert.equal((await sh(b.id, 'test -e /marker && echo present || echo absent')).trim(), 'absent');
    for (const c of children) {
      assert.ok((await dfRoot(c.id)).size > 3.8 * GiB, `${c.id} keeps its parent's disk size`);
      // forky-ident (respawned by our init as in tiny) gave it its own name.
      assert.equal((await sh(c.id, 'hostname')).trim(), c.id);
    }
  });

  it('a fresh boot (the image default, 2 GiB) runs python3, git and pip, and does not see the marker', async (t) => {
    const t0 = performance.now();
    const vm = await host.client.call('vm.boot', { image: 'debian', memMiB: 512 });
    t.diagnostic(`debian boot (TCG, agent answering): ${Math.round(performance.now() - t0)} ms`);
    assert.equal((await sh(vm.id, 'test -e /marker && echo present || echo absent')).trim(), 'absent');
    assert.equal((await sh(vm.id, 'hostname')).trim(), vm.id);
    assert.equal((await sh(vm.id, "python3 -c 'print(6*7)'")).trim(), '42');
    assert.match(await sh(vm.id, 'git --version'), /^git version 2\./);
    assert.match(await sh(vm.id, 'pip --version'), /^pip \d+.* \(python 3\.\d+\)/);
    // --without-pip: ensurepip's install of pip into the venv takes over 30 s under TCG.
    assert.match(
      await sh(vm.id, 'python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "import sys; print(sys.prefix)"'),
      /^\/tmp\/v$/m,
    );
    const { size } = await dfRoot(vm.id);
    assert.ok(size > 1.8 * GiB && size <= 2 * GiB, `df / size ${size}`);
    // DNS: the lease's server went into resolv.conf, and names resolve through it.
    assert.match(await leased(vm.id), new RegExp(`^nameserver ${resolver.replaceAll('.', '\\.')}$`, 'm'));
    assert.match(await sh(vm.id, `getent hosts ${probeName}`), new RegExp(`^${probeAddr.replaceAll('.', '\\.')}\\s+${probeName}`));
    const viaPython = await sh(vm.id, `python3 -c 'import socket; print(socket.gethostbyname("${probeName}"))'`);
    assert.equal(viaPython.trim(), probeAddr);
    await host.client.call('vm.destroy', { id: vm.id });
  });

  it('leaves the base image byte-identical', async () => {
    for (const v of [...children, big]) await host.client.call('vm.destroy', { id: v.id });
    assert.equal(await sha256(path.join(IMAGES_DIR, 'debian', 'disk.qcow2')), baseSum);
  });
});
