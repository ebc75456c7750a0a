import { ForkyError } from '@forky/base';
import type { Egress } from '@forky/contract';
import { chainScript, names, setsScript, type HostFacts } from './egress-rules.js';
import { removeScript } from './remove-rules.js';
import type { Nft } from './nft.js';

const DEVICE = /^[A-Za-z0-9_]{1,15}$/;

function deviceChain(device: string): string {
  if (!DEVICE.test(device)) throw new ForkyError('BAD_REQUEST', `device name ${JSON.stringify(device)} is not [A-Za-z0-9_]{1,15}`);
  return `dev_${device}`;
}

/**
 * TAP mode: a guest's packets reach the host through its TAP, not through QEMU's sockets, so the
 * VM's chain (the same rules, in a netdev table of the same name) is hooked at the TAP's ingress,
 * before the bridge or the host's stack sees them. `fib daddr type local` and `reject` work there
 * on the kernels we run (measured on 6.18).
 */
export class TapFilter {
  constructor(
    private readonly nft: Nft,
    private readonly facts: HostFacts,
  ) {}

  private get t(): string {
    return `netdev ${this.facts.table}`;
  }

  /** The netdev table and its sets; idempotent, like the inet table. */
  openScript(): string {
    return setsScript(this.facts, 'netdev').join('\n') + '\n';
  }

  vmScript(vmId: string, egress: Egress): string {
    return chainScript(this.facts, 'netdev', vmId, egress);
  }

  /**
   * Hooks the device's ingress to the VM's chain (made by `apply` before). Frames must carry the
   * VM's own MAC (as source, and as ARP's sender), so a guest cannot poison the bridge's or the
   * host's tables to take another VM's traffic.
   */
  async bind(vmId: string, device: string, mac: string): Promise<void> {
    const c = deviceChain(device);
    const { chain } = names(vmId);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac))
      throw new ForkyError('BAD_REQUEST', `MAC ${JSON.stringify(mac)} is not aa:bb:cc:dd:ee:ff`);
    await this.nft.run(
      [
        `add chain ${this.t} ${c} { type filter hook ingress device ${JSON.stringify(device)} priority 0; policy accept; }`,
        `flush chain ${this.t} ${c}`,
        `add rule ${this.t} ${c} ether saddr != ${mac} drop`,
        // VLAN-tagged frames could reach other segments of a trunk (the tag may be stripped into metadata before this hook).
        `add rule ${this.t} ${c} vlan id 0-4095 drop`,
        `add rule ${this.t} ${c} meta protocol 8021q drop`,
        // Link-level housekeeping a guest needs and that reaches no service: ARP (its own MAC only),
        // DHCP (broadcast, or to the host's own server for a renewal), IPv6 neighbour discovery.
        `add rule ${this.t} ${c} meta protocol arp arp saddr ether != ${mac} drop`,
        `add rule ${this.t} ${c} meta protocol arp accept`,
        `add rule ${this.t} ${c} udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept`,
        `add rule ${this.t} ${c} udp sport 68 udp dport 67 fib daddr type local accept`,
        `add rule ${this.t} ${c} icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept`,
        // Anything else that is not IP (VLAN tags, raw frames) could step around the chain: dropped.
        `add rule ${this.t} ${c} meta protocol != { ip, ip6 } drop`,
        `add rule ${this.t} ${c} goto ${chain}`,
        '',
      ].join('\n'),
    );
  }

  async unbind(device: string): Promise<void> {
    const c = deviceChain(device);
    const listed = await this.nft.list(['table', ...this.t.split(' ')]);
    if (listed?.some((o) => (o.chain as { name?: string } | undefined)?.name === c)) await this.nft.run(`delete chain ${this.t} ${c}\n`);
  }

  /** Removes the VM's netdev chains: the device chains that go to it first. */
  async removeVmScript(vmId: string): Promise<string> {
    const n = names(vmId);
    const listed = (await this.nft.list(['table', ...this.t.split(' ')])) ?? [];
    const chains = new Set(listed.map((o) => (o.chain as { name?: string } | undefined)?.name).filter(Boolean));
    const counters = new Set(listed.map((o) => (o.counter as { name?: string } | undefined)?.name).filter(Boolean));
    const devices = new Set<string>();
    for (const o of listed) {
      const rule = o.rule as { chain: string; expr?: unknown } | undefined;
      if (rule?.chain.startsWith('dev_') && JSON.stringify(rule.expr ?? []).includes(`"target":"${n.chain}"`)) devices.add(rule.chain);
    }
    const unhook = [...devices].map((d) => `delete chain ${this.t} ${d}\n`).join('');
    const has = { element: false, chain: chains.has(n.chain), refuse: chains.has(n.refuse), counter: counters.has(n.counter) };
    return unhook + removeScript(this.facts, vmId, has, 'netdev');
  }

  async refused(vmId: string): Promise<number> {
    const listed = await this.nft.list(['counter', ...this.t.split(' '), names(vmId).counter]);
    return (listed?.find((o) => 'counter' in o)?.counter as { packets?: number } | undefined)?.packets ?? 0;
  }

  async close(): Promise<void> {
    if (await this.nft.list(['table', ...this.t.split(' ')])) await this.nft.run(`delete table ${this.t}\n`);
  }
}
