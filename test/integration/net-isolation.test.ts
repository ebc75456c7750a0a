import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pollUntil } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import type { Egress, VmInfo } from '@forky/contract';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { createTestNet, hostAddress, type TestNet } from '../helpers/netns.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { ensureImageOnce } from '../helpers/repo.js';

const run = promisify(execFile);
const METADATA = '169.254.169.254';

/** A listener that greets with its own word, so a guest's output says which one it reached. */
async function greeter(host: string, word: string): Promise<{ server: net.Server; port: number; accepted: () => number }> {
  let n = 0;
  const server = net.createServer((s) => {
    n++;
    s.end(`${word}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  return { server, port: (server.address() as net.AddressInfo).port, accepted: () => n };
}

/** Whether `host:port` greets with `word` when dialled from this (the root) namespace. */
function greets(host: string, port: number, word: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 2000 });
    let got = '';
    s.on('data', (b) => (got += b.toString()));
    s.on('close', () => resolve(got.includes(word)));
    s.on('error', () => resolve(false));
    s.on('timeout', () => s.destroy());
  });
}

describe('network isolation with real QEMU: what a guest may reach, by policy, across a fork', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler | undefined;
  let tnet: TestNet;
  let parent: VmInfo;
  let work: string;
  const token = randomBytes(4).toString('hex');
  const servers: net.Server[] = [];
  let loopback: Awaited<ReturnType<typeof greeter>>;
  let external: Awaited<ReturnType<typeof greeter>>;
  let external4: string;
  const peerPort = randomInt(20000, 30000);
  let peer: string;
  let routeAdded = false;

  /** Dials from inside the guest (busybox nc); true if the listener's word came back. */
  const dial = async (vm: string, addr: string, port: number, word: string): Promise<boolean> => {
    const r = await host.client.call('vm.exec', {
      id: vm,
      cmd: ['/bin/sh', '-c', `echo | nc -w 4 ${addr} ${port} 2>&1; true`],
      timeoutMs: 30_000,
    });
    return r.stdout.includes(word);
  };
  const refused = async (vm: string): Promise<number> => (await host.client.call('vm.show', { id: vm })).network?.refused ?? -1;
  const setEgress = (vm: string, egress: Egress): Promise<VmInfo> => host.client.call('vm.network', { id: vm, network: { egress } });

  before(async () => {
    await ensureImageOnce();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-netiso-'));
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { overrides: { network: { mode: 'user', filter: 'nftables' } } });
    loopback = await greeter('127.0.0.1', `LOOP-${token}`);
    external4 = hostAddress();
    external = await greeter('0.0.0.0', `EXT-${token}`);
    servers.push(loopback.server, external.server);
    // A machine on a test network, reached through this host's routing; it also answers at the
    // metadata address, so that address is really reachable from the host.
    tnet = await createTestNet(1);
    const ns = tnet.hosts[0]!;
    peer = ns.addr;
    await run('ip', ['-n', ns.ns, 'addr', 'add', `${METADATA}/32`, 'dev', 'lo']);
    await run('ip', ['route', 'add', `${METADATA}/32`, 'via', peer]);
    routeAdded = true;
    const script = `require('net').createServer((s) => s.end('PEER-${token}\\n')).listen(${peerPort}, '0.0.0.0')`;
    tnet.spawnIn(ns, process.execPath, ['-e', script], path.join(work, 'peer.log'));
    await pollUntil(async () => (await greets(peer, peerPort, `PEER-${token}`)) || undefined, {
      timeoutMs: 20_000,
      what: 'the test network listener',
    });
    assert.ok(await greets(METADATA, peerPort, `PEER-${token}`), 'the metadata address answers from the host itself');
    assert.ok(await greets(external4, external.port, `EXT-${token}`), 'the host address answers from the host itself');
    parent = await host.client.call('vm.boot', {});
  });

  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
    for (const s of servers) s.close();
    if (routeAdded) await run('ip', ['route', 'del', `${METADATA}/32`]).catch(() => undefined);
    await tnet?.destroy();
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it('a VM booted without a policy gets `internet`, enforced by nftables', () => {
    assert.deepEqual(parent.network?.egress, 'internet');
    assert.equal(parent.network?.enforcedBy, 'nftables');
  });

  it('by default the guest reaches none of: host loopback, NATS, the host address, the metadata address, a private network', async () => {
    const before = await refused(parent.id);
    const natsPort = Number(new URL(nats.url).port);
    assert.equal(await dial(parent.id, '10.0.2.2', loopback.port, `LOOP-${token}`), false, 'host 127.0.0.1 through the gateway alias');
    assert.equal(await dial(parent.id, '10.0.2.2', natsPort, 'INFO'), false, 'the NATS port');
    assert.equal(await dial(parent.id, external4, external.port, `EXT-${token}`), false, 'the host non-loopback address');
    assert.equal(await dial(parent.id, METADATA, peerPort, `PEER-${token}`), false, 'the metadata address');
    assert.equal(await dial(parent.id, peer, peerPort, `PEER-${token}`), false, 'a private address');
    assert.equal(loopback.accepted() + external.accepted(), 1, 'only the host itself reached the host listeners (the check above)');
    assert.ok((await refused(parent.id)) >= before + 5, 'each attempt was refused by the VM filter');
  });

  it('IPv6 too: the host through the guest IPv6 gateway alias is refused by the filter (counted)', async () => {
    const v6 = await greeter('::', `V6-${token}`);
    servers.push(v6.server);
    // The image configures no IPv6; a hostile guest gives itself an address in QEMU's prefix
    // (and waits, at most 10 s, until duplicate address detection lets it use it).
    const script = `ip -6 addr add fec0::99/64 dev eth0; i=0; while ip -6 addr show dev eth0 | grep -q tentative && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done`;
    await host.client.call('vm.exec', { id: parent.id, cmd: ['/bin/sh', '-c', script] });
    const before = await refused(parent.id);
    assert.equal(await dial(parent.id, 'fec0::2', v6.port, `V6-${token}`), false, 'host [::] through fec0::2');
    assert.ok((await refused(parent.id)) > before, 'the attempt reached the filter and was refused there');
    assert.equal(v6.accepted(), 0);
  });

  it('an allow-listed address is reachable, and the floor still holds', async () => {
    const v = await setEgress(parent.id, { allow: [`${peer}/32`], dns: true });
    assert.deepEqual(v.network?.egress, { allow: [`${peer}/32`], dns: true });
    assert.equal(await dial(parent.id, peer, peerPort, `PEER-${token}`), true, 'the allowed peer');
    assert.equal(await dial(parent.id, '10.0.2.2', loopback.port, `LOOP-${token}`), false, 'host loopback');
    assert.equal(await dial(parent.id, METADATA, peerPort, `PEER-${token}`), false, 'the metadata address on the same peer');
  });

  it('a bad policy is refused with the field named, and the VM keeps its own', async () => {
    await assert.rejects(setEgress(parent.id, { allow: ['example.com:443'], dns: true }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'BAD_REQUEST');
      assert.match(e.message, /network\.egress|allow/);
      assert.match(e.message, /names are not taken/);
      return true;
    });
    assert.deepEqual((await host.client.call('vm.show', { id: parent.id })).network?.egress, { allow: [`${peer}/32`], dns: true });
  });

  it('a forked child keeps its parent policy, and each then has its own', async () => {
    const f = await host.client.call('fork', { source: parent.id, count: 1, resumeParent: true });
    const child = f.children[0]!;
    assert.deepEqual(child.network?.egress, { allow: [`${peer}/32`], dns: true });
    assert.equal(await dial(child.id, peer, peerPort, `PEER-${token}`), true, 'the child reaches the allowed peer');
    assert.equal(await dial(child.id, '10.0.2.2', loopback.port, `LOOP-${token}`), false, 'and not the host');
    await setEgress(child.id, 'none');
    assert.equal(await dial(child.id, peer, peerPort, `PEER-${token}`), false, 'the child, now none');
    assert.equal(await dial(parent.id, peer, peerPort, `PEER-${token}`), true, 'the parent is unchanged');
    await host.client.call('vm.destroy', { id: child.id });
  });

  it('a policy given to the scheduler reaches the VM, and a change through it holds', async () => {
    sched = await startTestScheduler(nats.url);
    const v = await sched.client.call('vm.boot', { network: { egress: { allow: [`${peer}:${peerPort}`] } } });
    assert.deepEqual(v.network?.egress, { allow: [`${peer}:${peerPort}`], dns: true });
    assert.equal(await dial(v.id, peer, peerPort, `PEER-${token}`), true, 'the allowed peer and port');
    const changed = await sched.client.call('vm.network', { id: v.id, network: { egress: 'none' } });
    assert.equal(changed.network?.egress, 'none');
    assert.equal(await dial(v.id, peer, peerPort, `PEER-${token}`), false);
    await sched.client.call('vm.destroy', { id: v.id });
  });

  it('with `none` every outbound connection fails, DNS included', async () => {
    const keep = `PEER-${token}`;
    await setEgress(parent.id, 'none');
    const before = await refused(parent.id);
    assert.equal(await dial(parent.id, peer, peerPort, keep), false, 'the peer');
    assert.equal(await dial(parent.id, external4, external.port, `EXT-${token}`), false, 'the host address');
    const dns = await host.client.call('vm.exec', {
      id: parent.id,
      cmd: ['/bin/sh', '-c', 'nslookup forky-test.example 10.0.2.3 2>&1; echo rc=$?'],
      timeoutMs: 30_000,
    });
    assert.doesNotMatch(dns.stdout, /rc=0/, 'a name does not resolve');
    assert.ok((await refused(parent.id)) > before, 'refused by the filter, not lost');
  });
});
