import dns from 'node:dns/promises';
import fs from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkyError, withDeadline, type Logger } from '@forky/base';
import type { Egress } from '@forky/contract';
import type { NetworkFilter } from '../../domain/ports.js';
import { execa } from 'execa';
import { findCgroup2, makeDir, nftName, removeDir, type Cgroup2 } from './cgroups.js';
import { hostKey, type HostFacts } from './egress-rules.js';
import { NftNetworkFilter } from './filter.js';
import { Nft } from './nft.js';
import { RestrictFilter } from './restrict.js';
import { TapFilter } from './tap-filter.js';

export interface NetworkFilterOptions {
  hostId: string;
  /** NATS server URLs (`nats://host:port`, `host:port`): their addresses are refused to every VM. */
  natsServers: string[];
  /** The operator's `network.deny` blocks (EgressAllowEntry syntax), refused to every VM. */
  deny: string[];
  /** Where VMs' DNS queries may go; default: the nameservers of /etc/resolv.conf. */
  resolvers?: string[];
  /** How VMs' NICs reach the host: QEMU user-mode (their packets leave by QEMU's sockets) or TAP. */
  mode: 'user' | 'tap';
  /** `auto` (default): nftables if this host can, else no network for VMs. `none`: never filter. */
  filter?: 'auto' | 'nftables' | 'none';
  log: Logger;
}

export type OpenedNetworkFilter = NetworkFilter & {
  /** The other hosts' addresses, refused to every VM (a filterless host has nothing to refuse them with: a no-op). */
  setClusterHosts(addrs: readonly string[]): Promise<void>;
  /**
   * Checks that the table and the host's cgroup are still the ones made (a `flush ruleset`, an
   * `nftables` reload or a removed cgroup would leave VMs unfiltered) and, if not, makes them again
   * with every VM's policy. Says whether it had to.
   */
  upkeep(vms: ReadonlyArray<{ id: string; egress: Egress }>): Promise<boolean>;
  close(o: { vmsLeft: number }): Promise<void>;
  describe(): string;
};

const RESOLVE_MS = 5_000;

/** The nameservers of /etc/resolv.conf (zone ids dropped: nft has no use for them). */
async function systemResolvers(): Promise<string[]> {
  const text = await fs.readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => (m[1] as string).split('%')[0] as string).filter((a) => isIP(a) !== 0);
}

function checkedResolvers(list: string[]): string[] {
  const bad = list.find((a) => isIP(a) === 0);
  if (bad !== undefined)
    throw new ForkyError('BAD_REQUEST', `resolver ${JSON.stringify(bad)} is not an IP address`, {
      details: { field: 'network.resolvers' },
    });
  return list;
}

/** Every address the NATS servers' hostnames resolve to now (the filter is made once, at open). */
async function natsAddresses(urls: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const u of urls) {
    let host: string;
    try {
      host = new URL(u.includes('://') ? u : `nats://${u}`).hostname.replace(/^\[|\]$/g, '');
    } catch {
      throw new ForkyError('BAD_REQUEST', `NATS server ${JSON.stringify(u)} is not a URL`, { details: { field: 'nats.servers' } });
    }
    if (isIP(host) !== 0) {
      out.push(host);
      continue;
    }
    try {
      const found = await withDeadline(dns.lookup(host, { all: true }), RESOLVE_MS, `resolving NATS server ${host}`);
      out.push(...found.map((a) => a.address));
    } catch (e) {
      throw new ForkyError(
        'INTERNAL',
        `cannot resolve NATS server ${host} (its addresses must be refused to VMs): ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
  }
  return out;
}

// Sends one UDP datagram to 127.0.0.1:9 from a process placed in a cgroup (the probe's self-test).
const PROBE_SENDER = "const s = require('dgram').createSocket('udp4'); s.send('x', 9, '127.0.0.1', () => s.close());";

/**
 * Whether this host can run the nftables filter: root, nft, a cgroup2 tree nft can name, a test
 * table with every kind of rule we use loading in this network namespace, and a datagram sent by a
 * process in a probe cgroup actually matching it (so the cgroup levels are right here, e.g. not
 * shifted by a cgroup namespace). Returns the cgroup2 tree, or the reason it cannot.
 */
export async function probeNftables(nft: Nft, mode: 'user' | 'tap'): Promise<{ cgroup: Cgroup2 } | { reason: string }> {
  if (process.getuid?.() !== 0) return { reason: 'hostd does not run as root' };
  try {
    await nft.version();
  } catch (e) {
    return { reason: `no usable nft command (${(e as Error).message})` };
  }
  let cgroup: Cgroup2;
  try {
    cgroup = await findCgroup2();
  } catch (e) {
    return { reason: (e as Error).message };
  }
  const suffix = randomBytes(4).toString('hex');
  const t = `forky_probe_${suffix}`;
  const dir = path.join(cgroup.mount, 'forky', `probe-${suffix}`);
  const { name, level } = nftName(cgroup, dir);
  const script = [
    `add table inet ${t}`,
    `add counter inet ${t} hit`,
    `add map inet ${t} vms { typeof socket cgroupv2 level ${level + 1} : verdict; }`,
    `add chain inet ${t} output { type filter hook output priority 0; policy accept; }`,
    `add rule inet ${t} output socket cgroupv2 level ${level} ${JSON.stringify(name)} udp dport 9 counter name hit drop`,
    `add rule inet ${t} output socket cgroupv2 level ${level} ${JSON.stringify(name)} fib daddr type { local, broadcast, multicast } meta l4proto tcp reject with tcp reset`,
    ...(mode === 'tap'
      ? [
          `add table netdev ${t}`,
          `add chain netdev ${t} dev_lo { type filter hook ingress device "lo" priority 0; policy accept; }`,
          `add rule netdev ${t} dev_lo ip daddr 192.0.2.255 fib daddr type { local, broadcast, multicast } meta l4proto tcp reject with tcp reset`,
        ]
      : []),
    '',
  ].join('\n');
  try {
    await makeDir(dir);
    try {
      await nft.run(script);
    } catch (e) {
      return { reason: `a test table does not load: ${(e as Error).message}` };
    }
    await execa('sh', ['-c', 'echo 0 > "$1/cgroup.procs" && exec "$0" -e "$2"', process.execPath, dir, PROBE_SENDER], { timeout: 10_000 });
    const listed = await nft.list(['counter', 'inet', t, 'hit']);
    const hits = (listed?.find((o) => 'counter' in o)?.counter as { packets?: number } | undefined)?.packets ?? 0;
    if (hits < 1) return { reason: `a packet from a process in cgroup ${dir} did not match its rule (cgroup namespace?)` };
    return { cgroup };
  } catch (e) {
    return { reason: `the probe failed: ${(e as Error).message}` };
  } finally {
    await nft.run(`delete table inet ${t}\n`).catch(() => undefined);
    if (mode === 'tap') await nft.run(`delete table netdev ${t}\n`).catch(() => undefined);
    await removeDir(dir).catch(() => undefined);
  }
}

/**
 * Opens this host's egress filter. `auto` falls back to no network for VMs (RestrictFilter) with
 * a warning when the probe fails, in user mode only: `restrict=on` does nothing for a TAP, so a
 * TAP host without nftables refuses to start unless `filter: 'none'` says so.
 */
export async function openNetworkFilter(opts: NetworkFilterOptions): Promise<OpenedNetworkFilter> {
  const filter = opts.filter ?? 'auto';
  if (filter === 'none') {
    // restrict=on does nothing for a TAP: such a VM would have the bridge's whole network while
    // its record said otherwise. TAP devices are filtered, or hostd does not start.
    if (opts.mode === 'tap')
      throw new ForkyError('BAD_REQUEST', "network.filter 'none' cannot be used with TAP devices: they would be unfiltered", {
        details: { field: 'network.filter' },
      });
    return new RestrictFilter("network.filter is 'none'");
  }
  const nft = new Nft(opts.log);
  const probe = await probeNftables(nft, opts.mode);
  if ('reason' in probe) {
    if (filter === 'nftables' || opts.mode === 'tap') {
      const tail = opts.mode === 'tap' ? ' (TAP devices are never left unfiltered)' : '';
      throw new ForkyError('INTERNAL', `the nftables egress filter cannot work on this host: ${probe.reason}${tail}`);
    }
    opts.log.warn(
      { reason: probe.reason },
      'no nftables egress filter: VMs get no network (qemu restrict=on), only egress "none" is accepted',
    );
    return new RestrictFilter(probe.reason);
  }
  const key = hostKey(opts.hostId);
  const hostDir = path.join(probe.cgroup.mount, 'forky', key);
  const { name, level } = nftName(probe.cgroup, hostDir);
  const facts: HostFacts = {
    table: `forky_${key}`,
    hostCgroup: name,
    hostLevel: level,
    resolvers: opts.resolvers ? checkedResolvers(opts.resolvers) : await systemResolvers(),
    nats: await natsAddresses(opts.natsServers),
    deny: opts.deny,
  };
  const taps = opts.mode === 'tap' ? new TapFilter(nft, facts) : undefined;
  const f = await NftNetworkFilter.open({ nft, cgroup: probe.cgroup, hostDir, facts, log: opts.log, ...(taps ? { taps } : {}) });
  opts.log.info({ filter: f.describe(), resolvers: facts.resolvers, nats: facts.nats }, 'egress filter open');
  return f;
}
