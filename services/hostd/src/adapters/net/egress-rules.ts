/**
 * Egress policy + host facts → nft script text. Pure: no I/O, so every rule a VM gets is unit-tested.
 * Scripts are in nft's command form (`add …`/`flush …`), one transaction per `nft -f -`: a policy
 * change lands whole or not at all, and holds from the next packet (no conntrack shortcut).
 */
import { createHash } from 'node:crypto';
import { ForkyError } from '@forky/base';
import type { Egress } from '@forky/contract';
import { hostBlock, parseBlock, type Block } from './addr.js';

/** Refused whatever the policy (besides the host's own addresses, matched with fib). */
export const FLOOR4 = [
  '127.0.0.0/8',
  '0.0.0.0/8',
  '169.254.0.0/16',
  '224.0.0.0/4',
  '240.0.0.0/4',
  // Cloud metadata outside link-local: Azure's WireServer, Alibaba's metadata service.
  '168.63.129.16/32',
  '100.100.100.200/32',
];
/** NAT64 prefixes are floor too: through a translator they name any IPv4 address, the floor's included. */
export const FLOOR6 = [
  '::1/128',
  '::/128',
  '::ffff:0:0/96',
  'fe80::/10',
  'ff00::/8',
  'fd00:ec2::254/128',
  '64:ff9b::/96',
  '64:ff9b:1::/48',
];
/** Not public: refused under `internet` (private, shared, reserved, documentation, translation blocks). */
export const SPECIAL4 = [
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '100.64.0.0/10',
  '192.0.0.0/24',
  '192.0.2.0/24',
  '198.18.0.0/15',
  '198.51.100.0/24',
  '203.0.113.0/24',
];
export const SPECIAL6 = ['fc00::/7', 'fec0::/10', '2001:db8::/32', '100::/64', '2001::/23', '2002::/16'];

/** What the scripts need to know of this host, fixed when the filter opens. */
export interface HostFacts {
  /** `forky_<hostKey>`. */
  table: string;
  /** The host's cgroup as nft names it: relative to /sys/fs/cgroup (`unified/forky/<hostKey>`). */
  hostCgroup: string;
  /** Depth of the host's cgroup in the cgroup2 tree (a VM's is one more). */
  hostLevel: number;
  /** Resolvers a VM's DNS queries go to (port 53 allowed to them when the policy has DNS). */
  resolvers: string[];
  /** NATS servers' addresses (floor). */
  nats: string[];
  /** The operator's `network.deny` entries (floor), EgressAllowEntry syntax. */
  deny: string[];
}

/** First 10 hex of sha256(hostId): names this hostd's table and cgroup, apart from other hostds'. */
export function hostKey(hostId: string): string {
  return createHash('sha256').update(hostId).digest('hex').slice(0, 10);
}

const VM_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** The VM id as a part of nft names (`-` → `_`: ids have no `_`, so it stays one-to-one). */
export function safeName(vmId: string): string {
  if (!VM_ID.test(vmId))
    throw new ForkyError('BAD_REQUEST', `VM id ${JSON.stringify(vmId)} is not [a-z0-9-]`, { details: { field: 'id' } });
  return vmId.replace(/-/g, '_');
}

/** The VM id a `vm_…` chain name stands for; undefined for other chains. */
export function vmIdOfChain(chain: string): string | undefined {
  const m = /^vm_([a-z0-9_]+)$/.exec(chain);
  return m ? (m[1] as string).replace(/_/g, '-') : undefined;
}

export const names = (vmId: string): { chain: string; refuse: string; counter: string } => {
  const s = safeName(vmId);
  return { chain: `vm_${s}`, refuse: `rf_${s}`, counter: `refused_${s}` };
};

/** nft's name of a VM's cgroup (the map key). */
export function vmCgroup(facts: HostFacts, vmId: string): string {
  safeName(vmId); // validates: the id becomes a directory name and a quoted nft string
  return `${facts.hostCgroup}/${vmId}`;
}

/** A string as nft quotes it (a cgroup path in a map element). */
export const q = (s: string): string => JSON.stringify(s);

function blocksOf(addrs: string[]): Block[] {
  return addrs.map((a) => hostBlock(a)).filter((b): b is Block => b !== undefined);
}

/** The floor's blocks: static ones, NATS servers, and the operator's deny entries (those with a port apart). */
export function floorBlocks(facts: HostFacts): { v4: string[]; v6: string[]; ported: Block[] } {
  const deny = facts.deny.map((d) => parseBlock(d, 'network.deny'));
  const all = [...blocksOf(facts.nats), ...deny.filter((b) => b.port === undefined)];
  return {
    v4: [...FLOOR4, ...all.filter((b) => b.family === 4).map((b) => b.cidr)],
    v6: [...FLOOR6, ...all.filter((b) => b.family === 6).map((b) => b.cidr)],
    ported: deny.filter((b) => b.port !== undefined),
  };
}

/** Where a VM's chain lives: the inet table (QEMU's sockets) or the netdev one (TAP devices). */
export type Family = 'inet' | 'netdev';

function setScript(fam: Family, table: string, name: string, type: 'ipv4_addr' | 'ipv6_addr', xs: string[]): string[] {
  // Flushed and refilled in the same transaction: a restarted hostd's facts replace the old ones at once.
  return [
    `add set ${fam} ${table} ${name} { type ${type}; flags interval; auto-merge; }`,
    `flush set ${fam} ${table} ${name}`,
    xs.length > 0 ? `add element ${fam} ${table} ${name} { ${xs.join(', ')} }` : '',
  ].filter(Boolean);
}

/** The sets every VM chain refers to, in a table of `fam`. */
export function setsScript(facts: HostFacts, fam: Family): string[] {
  const t = facts.table;
  const floor = floorBlocks(facts);
  const dns = blocksOf(facts.resolvers);
  return [
    `add table ${fam} ${t}`,
    ...setScript(fam, t, 'floor4', 'ipv4_addr', floor.v4),
    ...setScript(fam, t, 'floor6', 'ipv6_addr', floor.v6),
    ...setScript(fam, t, 'special4', 'ipv4_addr', SPECIAL4),
    ...setScript(fam, t, 'special6', 'ipv6_addr', SPECIAL6),
    ...setScript(
      fam,
      t,
      'dns4',
      'ipv4_addr',
      dns.filter((b) => b.family === 4).map((b) => b.cidr),
    ),
    ...setScript(
      fam,
      t,
      'dns6',
      'ipv6_addr',
      dns.filter((b) => b.family === 6).map((b) => b.cidr),
    ),
    // Other hosts of the cluster, from their heartbeats (clusterScript): made once and never
    // flushed here, so a restarted hostd keeps refusing the last list it had until it refreshes.
    `add set ${fam} ${t} cluster4 { type ipv4_addr; flags interval; auto-merge; }`,
    `add set ${fam} ${t} cluster6 { type ipv6_addr; flags interval; auto-merge; }`,
  ];
}

/** Replaces the cluster's host addresses (refused to every VM) in the tables of `fams`, in one transaction. */
export function clusterScript(facts: HostFacts, fams: Family[], addrs: string[]): string {
  const blocks = blocksOf(addrs);
  const lines: string[] = [];
  for (const fam of fams) {
    for (const [name, family] of [
      ['cluster4', 4],
      ['cluster6', 6],
    ] as const) {
      const xs = blocks.filter((b) => b.family === family).map((b) => b.cidr);
      lines.push(`flush set ${fam} ${facts.table} ${name}`);
      if (xs.length > 0) lines.push(`add element ${fam} ${facts.table} ${name} { ${xs.join(', ')} }`);
    }
  }
  return lines.join('\n') + '\n';
}

/**
 * The table: sets, the VM map, and the output hook that sends every packet of a process in this
 * host's cgroup to its VM's chain, and refuses the packets of processes in it that are no known VM.
 * Idempotent (`add` of what exists is a no-op), so a restarted hostd reloads it over live VMs.
 */
export function tableScript(facts: HostFacts): string {
  const t = facts.table;
  return [
    ...setsScript(facts, 'inet'),
    `add map inet ${t} vms { typeof socket cgroupv2 level ${facts.hostLevel + 1} : verdict; }`,
    `add counter inet ${t} refused_unknown`,
    `add chain inet ${t} host`,
    `add chain inet ${t} output { type filter hook output priority 0; policy accept; }`,
    `flush chain inet ${t} host`,
    `add rule inet ${t} host socket cgroupv2 level ${facts.hostLevel + 1} vmap @vms`,
    // A process in our subtree that is no known VM (a leftover, or not yet applied): refused.
    `add rule inet ${t} host counter name refused_unknown reject`,
    `flush chain inet ${t} output`,
    `add rule inet ${t} output socket cgroupv2 level ${facts.hostLevel} ${q(facts.hostCgroup)} goto host`,
    '',
  ].join('\n');
}

function ruleFor(b: Block, verdict: string): string {
  const match = b.family === 4 ? `ip daddr ${b.cidr}` : `ip6 daddr ${b.cidr}`;
  return b.port === undefined ? `${match} ${verdict}` : `${match} meta l4proto { tcp, udp } th dport ${b.port} ${verdict}`;
}

/** The rules of a VM's chain, in order (without the `add rule inet T CHAIN` prefix). */
export function vmRules(facts: HostFacts, vmId: string, egress: Egress): string[] {
  const { refuse } = names(vmId);
  const no = `goto ${refuse}`;
  if (egress === 'none') return [no];
  const rules: string[] = [];
  const dns = egress === 'internet' || egress.dns;
  if (dns) {
    // Before the floor: a resolver may well be on the host's loopback or a private address.
    rules.push(
      'meta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept',
      'meta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept',
    );
  }
  rules.push(
    // The host's own addresses, and its broadcast and multicast ones (a datagram to a subnet's
    // broadcast address reaches a host service bound to 0.0.0.0).
    'fib daddr type { local, broadcast, multicast } ' + no,
    'ip daddr @floor4 ' + no,
    'ip6 daddr @floor6 ' + no,
    'ip daddr @cluster4 ' + no,
    'ip6 daddr @cluster6 ' + no,
  );
  for (const b of floorBlocks(facts).ported) rules.push(ruleFor(b, no));
  if (egress === 'internet') {
    rules.push('ip daddr @special4 ' + no, 'ip6 daddr @special6 ' + no, 'accept');
    return rules;
  }
  for (const entry of egress.allow) rules.push(ruleFor(parseBlock(entry, 'network.egress'), 'accept'));
  rules.push(no);
  return rules;
}

/**
 * Makes or replaces a VM's filter in one transaction: its refusal counter and chain, its rules, and
 * the map element that sends its cgroup's packets there. The cgroup must exist (nft resolves the
 * path to the directory's id when it loads the element).
 */
export function applyScript(facts: HostFacts, vmId: string, egress: Egress): string {
  const element = `add element inet ${facts.table} vms { ${q(vmCgroup(facts, vmId))} : jump ${names(vmId).chain} }\n`;
  return chainScript(facts, 'inet', vmId, egress) + element;
}

/** A VM's refusal counter, refusal chain and policy chain in a table of `fam`, replaced whole. */
export function chainScript(facts: HostFacts, fam: Family, vmId: string, egress: Egress): string {
  const t = `${fam} ${facts.table}`;
  const n = names(vmId);
  const rules = vmRules(facts, vmId, egress);
  return [
    `add counter ${t} ${n.counter}`,
    `add chain ${t} ${n.refuse}`,
    `add chain ${t} ${n.chain}`,
    `flush chain ${t} ${n.refuse}`,
    `add rule ${t} ${n.refuse} counter name ${n.counter}`,
    // TCP gets a reset (a connection open or opening ends at once); the rest ICMP unreachable.
    `add rule ${t} ${n.refuse} meta l4proto tcp reject with tcp reset`,
    `add rule ${t} ${n.refuse} reject`,
    `flush chain ${t} ${n.chain}`,
    ...rules.map((r) => `add rule ${t} ${n.chain} ${r}`),
    '',
  ].join('\n');
}
