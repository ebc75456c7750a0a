import { openNetworkFilter } from '@forky/hostd/internal';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pollUntil, silentLogger } from '@forky/base';
import { createVethNs, hostAddress, type VethNs } from '../helpers/netns.js';

type Filter = Awaited<ReturnType<typeof openNetworkFilter>>;

const run = promisify(execFile);
const nft = (...args: string[]): Promise<string> => run('nft', args).then((r) => r.stdout);
const exists = (p: string): Promise<boolean> =>
  fs.stat(p).then(
    () => true,
    () => false,
  );

function listen(host: string, port = 0): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer((s) => {
      s.on('error', () => undefined);
      s.on('data', (d) => s.write(d));
    });
    srv.once('error', reject);
    srv.listen(port, host, () => resolve(srv));
  });
}
const portOf = (s: net.Server): number => (s.address() as net.AddressInfo).port;

/** Connects once from here (outside every VM cgroup): true when it connects. */
function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 1000 });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

// A client run by node -e: prints `connected` or `error CODE` (or `timeout`); with HOLD it keeps
// the connection and writes to it every 50 ms until that fails.
const CLIENT = `
const net = require('net');
const [host, port, hold] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port) });
s.setTimeout(3000, () => { console.log('timeout'); process.exit(0); });
s.on('connect', () => {
  console.log('connected');
  if (hold !== 'hold') { s.destroy(); process.exit(0); }
  s.setTimeout(0);
  setInterval(() => s.write('x'), 50);
});
s.on('error', (e) => { console.log('error ' + e.code); process.exit(0); });
s.on('close', () => { console.log('closed'); process.exit(0); });
`;

const children = new Set<ChildProcess>();

/** Starts the client in cgroup `dir` (it moves itself there before exec, as the QEMU launcher does). */
function clientIn(dir: string, host: string, port: number, hold = false): { proc: ChildProcess; out: () => string; done: Promise<string> } {
  const proc = spawn(
    'sh',
    [
      '-c',
      'echo 0 > "$1/cgroup.procs" && exec "$0" -e "$2" "$3" "$4" "$5"',
      process.execPath,
      dir,
      CLIENT,
      host,
      String(port),
      hold ? 'hold' : '',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  children.add(proc);
  let text = '';
  proc.stdout.on('data', (d: Buffer) => (text += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (text += d.toString()));
  const done = new Promise<string>((resolve) => proc.once('exit', () => (children.delete(proc), resolve(text.trim()))));
  return { proc, out: () => text, done };
}

const attempt = (dir: string, host: string, port: number): Promise<string> => clientIn(dir, host, port).done;

describe('nftables egress filter (real nft, cgroups, processes; no QEMU)', { timeout: 120_000 }, () => {
  const tag = randomBytes(4).toString('hex');
  const filters: Filter[] = [];
  const servers: net.Server[] = [];
  let veth: VethNs;
  let guestNs: VethNs;
  let a: Filter;
  let b: Filter;
  let loopback: net.Server;
  let loop6: net.Server | undefined;
  let hostSrv: net.Server;
  let dnsSrv: net.Server;
  let dnsAddr: string;
  let nsPort: number;
  const hostIp = hostAddress();

  const open = async (hostId: string, extra: Partial<Parameters<typeof openNetworkFilter>[0]> = {}): Promise<Filter> => {
    const f = await openNetworkFilter({
      hostId,
      natsServers: ['nats://127.0.0.1:4222'],
      deny: [],
      resolvers: [dnsAddr],
      mode: 'user',
      filter: 'nftables',
      log: silentLogger(),
      ...extra,
    });
    filters.push(f);
    return f;
  };

  before(async () => {
    dnsAddr = `127.${randomInt(1, 250)}.${randomInt(1, 250)}.${randomInt(2, 250)}`;
    loopback = await listen('127.0.0.1');
    hostSrv = await listen(hostIp);
    dnsSrv = await listen(dnsAddr, 53);
    servers.push(loopback, hostSrv, dnsSrv);
    loop6 = await listen('::1').catch(() => undefined);
    if (loop6) servers.push(loop6);
    veth = await createVethNs();
    nsPort = randomInt(20000, 60000);
    const srv = veth.spawn(process.execPath, [
      '-e',
      `require('net').createServer((s) => { s.on('error', () => {}); s.on('data', (d) => s.write(d)); }).listen(${nsPort}, '${veth.nsAddr}')`,
    ]);
    children.add(srv);
    await pollUntil(async () => (await reachable(veth.nsAddr, nsPort)) || undefined, {
      timeoutMs: 10_000,
      intervalMs: 50,
      what: 'the netns listener',
    });
    a = await open(`net-test-a-${tag}`);
    b = await open(`net-test-b-${tag}`);
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(
      [...children].map((c) => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(undefined) : c.once('exit', r)))),
    );
    for (const f of filters) await f.close({ vmsLeft: 0 }).catch((e: Error) => console.error('close:', e.message));
    await veth?.destroy();
    await guestNs?.destroy();
    for (const s of servers) s.close();
  });

  it('internet: loopback, the host’s own address, ::1 and private blocks refused; DNS to the resolver passes', async () => {
    await a.apply('vm-inet', 'internet');
    const dir = a.scope('vm-inet') as string;
    assert.ok(await exists(dir), dir);
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, hostIp, portOf(hostSrv)), 'error ECONNREFUSED');
    if (loop6) assert.equal(await attempt(dir, '::1', portOf(loop6)), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, '169.254.169.254', 80), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, dnsAddr, 53), 'connected', 'DNS (tcp 53) to the resolver');
    // Outside the cgroup the same listeners answer: it is the filter, not the network.
    assert.ok(await reachable('127.0.0.1', portOf(loopback)));
    assert.ok(await reachable(veth.nsAddr, nsPort));
    assert.ok(((await a.refused('vm-inet')) ?? 0) >= 5, `refused: ${await a.refused('vm-inet')}`);
  });

  it('none: nothing at all, DNS included', async () => {
    await a.apply('vm-none', 'none');
    const dir = a.scope('vm-none') as string;
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, dnsAddr, 53), 'error ECONNREFUSED');
    assert.equal(await a.refused('vm-none'), 2);
  });

  it('an allow-list reaches its block (and port) only; DNS off when asked', async () => {
    await a.apply('vm-allow', { allow: [`${veth.nsAddr}/32`], dns: false });
    const dir = a.scope('vm-allow') as string;
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'connected');
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, dnsAddr, 53), 'error ECONNREFUSED');
    await a.apply('vm-allow', { allow: [`${veth.nsAddr}:${nsPort + 1}`], dns: true });
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'error ECONNREFUSED', 'another port of the block');
    assert.equal(await attempt(dir, dnsAddr, 53), 'connected');
    // Floor before allow: allowing loopback outright does not open it.
    await a.apply('vm-allow', { allow: ['127.0.0.0/8', `${hostIp}/32`], dns: false });
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    assert.equal(await attempt(dir, hostIp, portOf(hostSrv)), 'error ECONNREFUSED');
  });

  it('another host of the cluster is refused even when an allow-list covers it, until it leaves the list', async () => {
    await a.apply('vm-peer', { allow: [`${veth.nsAddr}/24`], dns: false });
    const dir = a.scope('vm-peer') as string;
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'connected', 'allowed, no cluster host yet');
    await a.setClusterHosts([veth.nsAddr, 'fd00::77']);
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'error ECONNREFUSED', 'now a cluster host');
    await a.setClusterHosts([]);
    assert.equal(await attempt(dir, veth.nsAddr, nsPort), 'connected', 'left the cluster');
    await a.remove('vm-peer');
  });

  it('an nft that fails to list (timing out under load) is no finding: the upkeep remakes nothing', async () => {
    const u = await open(`net-test-l-${tag}`);
    await u.apply('vm-ls', 'none');
    // Our own nft in front of the real one: `list tables` fails as a timed-out run would.
    const bin = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-nft-'));
    const real = (await promisify(execFile)('sh', ['-c', 'command -v nft'])).stdout.trim();
    await fs.writeFile(
      path.join(bin, 'nft'),
      `#!/bin/sh\ncase "$*" in *"list tables"*) echo 'timed out' >&2; exit 1;; esac\necho "$*" >> ${bin}/calls\nexec ${real} "$@"\n`,
      { mode: 0o755 },
    );
    const PATH = process.env.PATH;
    process.env.PATH = `${bin}:${PATH}`;
    try {
      assert.equal(await u.upkeep([{ id: 'vm-ls', egress: 'none' }]), false);
      const calls = await fs.readFile(path.join(bin, 'calls'), 'utf8').catch(() => '');
      assert.equal(calls, '', 'no nft script was run: nothing was made again');
    } finally {
      process.env.PATH = PATH;
      await fs.rm(bin, { recursive: true, force: true });
    }
    await u.remove('vm-ls');
  });

  it('a table deleted under live VMs (a `flush ruleset`) is found by the upkeep and made again with every policy', async () => {
    const u = await open(`net-test-u-${tag}`);
    await u.apply('vm-up', 'internet');
    const dir = u.scope('vm-up') as string;
    assert.equal(await u.upkeep([{ id: 'vm-up', egress: 'internet' }]), false, 'nothing to repair');
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    const table = u.describe().match(/table inet (\S+),/)?.[1] as string;
    await nft('delete', 'table', 'inet', table);
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'connected', 'open while the table is gone');
    assert.equal(await u.upkeep([{ id: 'vm-up', egress: 'internet' }]), true);
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED', 'filtered again');
    // Whether a process is the VM's, by its cgroup (what a restarted hostd checks of each QEMU).
    const inside = spawn('sh', ['-c', 'echo 0 > "$1/cgroup.procs" && echo in && exec sleep 30', 'sh', dir], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    children.add(inside);
    await new Promise((resolve) => inside.stdout.once('data', resolve));
    assert.equal(await u.holds('vm-up', inside.pid as number), true, 'a process in the VM cgroup');
    assert.equal(await u.holds('vm-up', process.pid), false, 'this test process is not in it');
    inside.kill('SIGKILL');
    await new Promise((resolve) =>
      inside.exitCode !== null || inside.signalCode !== null ? resolve(undefined) : inside.once('exit', resolve),
    );
    children.delete(inside);
    await u.remove('vm-up');
  });

  it('a policy change cuts a connection already open', async () => {
    await a.apply('vm-live', { allow: [`${veth.nsAddr}/32`], dns: true });
    const dir = a.scope('vm-live') as string;
    const c = clientIn(dir, veth.nsAddr, nsPort, true);
    await pollUntil(() => Promise.resolve(c.out().includes('connected') || undefined), {
      timeoutMs: 5000,
      intervalMs: 20,
      what: 'the client connecting',
    });
    const before = await a.refused('vm-live');
    await a.apply('vm-live', 'internet');
    const out = await c.done;
    assert.match(out, /^connected\n(error ECONNRESET|error EPIPE|closed)/, out);
    assert.ok(((await a.refused('vm-live')) ?? 0) > (before ?? 0));
  });

  it('a process in the host’s cgroup that is no known VM is refused', async () => {
    const stray = `${(a.scope('vm-inet') as string).replace(/\/[^/]+$/, '')}/vm-stray`;
    await fs.mkdir(stray);
    assert.equal(await attempt(stray, veth.nsAddr, nsPort), 'error ECONNREFUSED');
  });

  it('two hostds’ filters do not interfere', async () => {
    await b.apply('vm-inet', { allow: [`${veth.nsAddr}/32`], dns: false });
    assert.equal(await attempt(b.scope('vm-inet') as string, veth.nsAddr, nsPort), 'connected');
    assert.equal(await attempt(a.scope('vm-inet') as string, veth.nsAddr, nsPort), 'error ECONNREFUSED');
    assert.notEqual(a.scope('vm-inet'), b.scope('vm-inet'));
    const c = await open(`net-test-c-${tag}`);
    await c.apply('vm-inet', 'none');
    await c.close({ vmsLeft: 0 });
    assert.equal(await attempt(b.scope('vm-inet') as string, veth.nsAddr, nsPort), 'connected', 'b after c closed');
  });

  it('sweep removes the chains, elements and cgroups of VMs not kept', async () => {
    await a.apply('vm-gone', 'internet');
    const gone = a.scope('vm-gone') as string;
    const n = await a.sweep(new Set(['vm-inet', 'vm-none', 'vm-allow', 'vm-live']));
    assert.equal(n, 2, 'vm-gone and vm-stray');
    assert.equal(await exists(gone), false);
    const table = await nft('list', 'table', 'inet', a.describe().match(/table inet (\S+),/)?.[1] as string);
    assert.doesNotMatch(table, /vm_vm_gone|vm-gone|vm_vm_stray/);
    assert.match(table, /"[^"]*\/vm-inet" : jump vm_vm_inet/);
    // Kept VMs still filtered, a swept one's leftover process is refused.
    assert.equal(await attempt(a.scope('vm-inet') as string, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    assert.equal(await attempt(a.scope('vm-allow') as string, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
  });

  it('remove and close: the table stays while VMs are left, goes with the cgroups at 0', async () => {
    const d = await open(`net-test-d-${tag}`);
    const table = d.describe().match(/table inet (\S+),/)?.[1] as string;
    await d.apply('vm-one', 'internet');
    const dir = d.scope('vm-one') as string;
    await d.close({ vmsLeft: 1 });
    assert.match(await nft('list', 'tables'), new RegExp(`inet ${table}\\b`));
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    // A restarted hostd reopens over it (idempotent) and the VM stays filtered.
    const d2 = await open(`net-test-d-${tag}`);
    assert.equal(await attempt(dir, '127.0.0.1', portOf(loopback)), 'error ECONNREFUSED');
    await d2.remove('vm-one');
    assert.equal(await exists(dir), false);
    await d2.close({ vmsLeft: 0 });
    assert.doesNotMatch(await nft('list', 'tables'), new RegExp(`inet ${table}\\b`));
    assert.equal(await exists(dir.replace(/\/vm-one$/, '')), false);
  });

  it('TAP mode: a device bound to the VM’s chain refuses the host’s addresses; ARP and DNS pass', async () => {
    guestNs = await createVethNs();
    // The resolver on the host end of the "TAP": DNS is let through before the floor refuses the host.
    const tapDns = await listen(guestNs.hostAddr, 53);
    const tapSrv = await listen(guestNs.hostAddr);
    servers.push(tapDns, tapSrv);
    const t = await open(`net-test-t-${tag}`, { mode: 'tap', resolvers: [guestNs.hostAddr] });
    const fromGuest = (host: string, port: number): Promise<string> => {
      const p = guestNs.spawn(process.execPath, ['-e', CLIENT, host, String(port)]);
      children.add(p);
      let text = '';
      p.stdout?.on('data', (d: Buffer) => (text += d.toString()));
      return new Promise((resolve) => p.once('exit', () => (children.delete(p), resolve(text.trim()))));
    };
    assert.equal(await fromGuest(hostIp, portOf(hostSrv)), 'connected', 'before binding');
    assert.equal(await fromGuest(guestNs.hostAddr, portOf(tapSrv)), 'connected', 'before binding');
    await t.apply('vm-tap', 'internet');
    await t.bindDevice('vm-tap', guestNs.hostEnd, guestNs.nsMac);
    assert.equal(await fromGuest(hostIp, portOf(hostSrv)), 'error ECONNREFUSED');
    assert.equal(await fromGuest(guestNs.hostAddr, portOf(tapSrv)), 'error ECONNREFUSED');
    assert.equal(await fromGuest(guestNs.hostAddr, 53), 'connected', 'DNS to the resolver');
    await t.apply('vm-tap', 'none');
    assert.equal(await fromGuest(guestNs.hostAddr, 53), 'error ECONNREFUSED', 'none: DNS too');
    assert.ok(((await t.refused('vm-tap')) ?? 0) >= 3, `refused ${await t.refused('vm-tap')}`);
    // Pinned to the VM's MAC: a device whose guest sends from another MAC gets nothing through, DNS neither.
    await t.apply('vm-tap', 'internet');
    await t.bindDevice('vm-tap', guestNs.hostEnd, '02:00:00:00:00:01');
    assert.notEqual(await fromGuest(guestNs.hostAddr, 53), 'connected', 'another MAC: dropped');
    await t.unbindDevice(guestNs.hostEnd);
    assert.equal(await fromGuest(hostIp, portOf(hostSrv)), 'connected', 'after unbinding');
    await t.remove('vm-tap');
    const tname = t.describe().match(/table inet (\S+),/)?.[1] as string;
    assert.doesNotMatch(await nft('list', 'table', 'netdev', tname), /vm_vm_tap|dev_/);
  });
});
