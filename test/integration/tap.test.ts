import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pollUntil } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import type { VmInfo } from '@forky/contract';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { guestShell } from '../helpers/guest.js';
import { ensureImageOnce, IMAGE_CACHE_DIR } from '../helpers/repo.js';

const run = promisify(execFile);

/** TAP devices enslaved to `bridge`. */
async function tapsOn(bridge: string): Promise<string[]> {
  const { stdout } = await run('ip', ['-o', 'link', 'show', 'master', bridge]);
  return [...stdout.matchAll(/^\d+: (fk[0-9a-f]+)[:@]/gm)].map((m) => m[1] as string);
}

describe('TAP on a bridge: every child gets its own device and its own DHCP lease', { timeout: 300_000 }, () => {
  const bridge = `fkbr${randomBytes(2).toString('hex')}`;
  const subnet = `10.${randomInt(100, 200)}.${randomInt(1, 250)}`;
  let work: string;
  let dhcpd: ChildProcess | undefined;
  let nats: NatsServer;
  let host: TestHost;
  let parent: VmInfo;
  let children: VmInfo[] = [];
  const sh = guestShell((id, cmd) => host.client.call('vm.exec', { id, cmd }));
  const leaseOf = (id: string): Promise<string> => sh(id, 'cat /run/forky/ip 2>/dev/null || true').then((s) => s.trim());

  before(async () => {
    await ensureImageOnce();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-tap-'));
    await run('ip', ['link', 'add', 'name', bridge, 'type', 'bridge']);
    await run('ip', ['addr', 'add', `${subnet}.1/24`, 'dev', bridge]);
    await run('ip', ['link', 'set', bridge, 'up']);
    // A DHCP server on the bridge: busybox's udhcpd, from the busybox-static the image build fetched.
    const deb = (await fs.readdir(path.join(IMAGE_CACHE_DIR, 'debs'))).find((f) => f.startsWith('busybox-static_'));
    assert.ok(deb, 'the image build keeps busybox-static in its cache');
    await run('dpkg-deb', ['-x', path.join(IMAGE_CACHE_DIR, 'debs', deb), path.join(work, 'bb')]);
    const conf = path.join(work, 'udhcpd.conf');
    await fs.writeFile(
      conf,
      [
        `start ${subnet}.100`,
        `end ${subnet}.200`,
        `interface ${bridge}`,
        `lease_file ${work}/leases`,
        `pidfile ${work}/udhcpd.pid`,
        `opt router ${subnet}.1`,
        'opt subnet 255.255.255.0',
        '',
      ].join('\n'),
    );
    await fs.writeFile(path.join(work, 'leases'), '');
    dhcpd = spawn(path.join(work, 'bb', 'bin', 'busybox'), ['udhcpd', '-f', conf], { stdio: 'ignore' });
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { overrides: { network: { mode: 'tap', bridge }, pool: { size: 0 } } });
  });

  after(async () => {
    await host?.stop();
    await nats?.stop();
    dhcpd?.kill('SIGTERM');
    await run('ip', ['link', 'del', bridge]).catch(() => undefined);
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it('boots a VM whose NIC is a TAP on the bridge and which gets a lease', async () => {
    parent = await host.client.call('vm.boot', { memMiB: 256 });
    assert.equal((await tapsOn(bridge)).length, 1);
    const lease = await pollUntil(async () => ((await leaseOf(parent.id)).startsWith(`${subnet}.`) ? leaseOf(parent.id) : undefined), {
      timeoutMs: 60_000,
      what: 'parent lease',
    });
    assert.match(lease, new RegExp(`^${subnet.replaceAll('.', '\\.')}\\.(1\\d\\d|200)$`));
  });

  it('live-forks 2 children: each has its own TAP, MAC and lease (DHCP passes the filter); they cannot reach each other or the host', async () => {
    const parentLease = await leaseOf(parent.id);
    children = (await host.client.call('fork', { source: parent.id, count: 2, resumeParent: true })).children;
    // The parent's successor and two children; the parent's old process took its TAP with it.
    assert.equal((await tapsOn(bridge)).length, 3);
    const leases = await Promise.all(
      children.map((c) =>
        pollUntil(
          async () => {
            const l = await leaseOf(c.id);
            return l.startsWith(`${subnet}.`) && l !== parentLease ? l : undefined;
          },
          { timeoutMs: 60_000, what: `a lease of its own for ${c.id}` },
        ),
      ),
    );
    assert.equal(new Set([parentLease, ...leases]).size, 3, `three addresses: ${parentLease} ${leases.join(' ')}`);
    // Isolated bridge ports and each TAP's egress filter (README "Network isolation"): no VM reaches another, nor the host.
    const pings = async (from: string, to: string): Promise<boolean> =>
      (await sh(from, `ping -c 1 -W 3 ${to} >/dev/null 2>&1 && echo yes || echo no`)).trim() === 'yes';
    assert.equal(await pings(children[0]?.id as string, leases[1] as string), false, 'child to child');
    assert.equal(await pings(parent.id, leases[0] as string), false, 'parent to child');
    assert.equal(await pings(parent.id, `${subnet}.1`), false, 'a VM to the host bridge address');
  });

  it('removes every TAP with its VM', async () => {
    for (const v of [...children, parent]) await host.client.call('vm.destroy', { id: v.id });
    assert.deepEqual(await tapsOn(bridge), []);
  });
});
