import { isIP } from 'node:net';
import { z } from 'zod';
import { IdempotencyKey, VmId } from './ids.js';

/** At most this many entries in an allow-list. */
export const EGRESS_ALLOW_MAX = 64;

/** One allow-list entry, parsed: an address block and, optionally, one destination port (TCP and UDP). */
export interface EgressRule {
  family: 4 | 6;
  /** The address as written (hostd masks host bits when it makes the rule). */
  addr: string;
  /** Prefix length: 32 or 128 when none was written. */
  prefix: number;
  port?: number;
}

/**
 * Parses `ADDR`, `ADDR/LEN`, `ADDR:PORT` or `ADDR/LEN:PORT`; an IPv6 block takes brackets when
 * a port follows (`[fd00::1]:443`, `[fd00::/64]:443`). Addresses only: a name would be resolved
 * once by someone and then go stale. Returns the rule, or what is wrong with the entry.
 */
export function parseEgressRule(entry: string): EgressRule | string {
  let block = entry;
  let port: number | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(entry);
  if (bracketed) {
    block = bracketed[1] as string;
    if (bracketed[2] !== undefined) port = Number(bracketed[2]);
  } else if (entry.split(':').length === 2) {
    // Exactly one colon: IPv4 with a port (an IPv6 address has at least two).
    const [b, p] = entry.split(':') as [string, string];
    if (!/^\d{1,5}$/.test(p)) return `port ${JSON.stringify(p)} is not a number`;
    block = b;
    port = Number(p);
  }
  if (port !== undefined && (port < 1 || port > 65535)) return `port ${port} is not in 1..65535`;
  const [addr, len, ...rest] = block.split('/');
  if (rest.length > 0 || addr === undefined) return 'more than one "/"';
  const family = isIP(addr);
  if (family === 0) return `${JSON.stringify(addr)} is not an IPv4 or IPv6 address (names are not taken: write the address)`;
  const max = family === 4 ? 32 : 128;
  if (len !== undefined && !/^\d{1,3}$/.test(len)) return `prefix length ${JSON.stringify(len)} is not a number`;
  const prefix = len === undefined ? max : Number(len);
  if (prefix > max) return `prefix length ${prefix} is longer than ${max}`;
  return { family: family as 4 | 6, addr, prefix, ...(port !== undefined ? { port } : {}) };
}

export const EgressAllowEntry = z
  .string()
  .min(1)
  .max(64)
  .superRefine((s, ctx) => {
    const r = parseEgressRule(s);
    if (typeof r === 'string') ctx.addIssue({ code: 'custom', message: `allow entry ${JSON.stringify(s)}: ${r}` });
  });

/**
 * Where a guest may open connections (README "Network isolation"). Whatever the policy, a guest
 * never reaches the host's own addresses, loopback, link-local and metadata addresses, the NATS
 * servers or the operator's `network.deny` blocks: those are refused before any allow-list.
 *   `none`      nothing at all, DNS included
 *   `internet`  public addresses only (private, shared, reserved and documentation blocks refused), and DNS
 *   `{allow}`   only the listed blocks (and ports), and DNS unless `dns: false`
 */
export const Egress = z.union([
  z.enum(['none', 'internet']),
  z.strictObject({
    allow: z.array(EgressAllowEntry).min(1).max(EGRESS_ALLOW_MAX),
    /** Queries to the host's resolvers (port 53) through the guest's DNS address. */
    dns: z.boolean().default(true),
  }),
]);
export type Egress = z.infer<typeof Egress>;

/** A VM's network policy: given at boot, inherited by its children, changed with `vm.network`. */
export const NetworkPolicy = z.strictObject({ egress: Egress.default('internet') });
export type NetworkPolicy = z.infer<typeof NetworkPolicy>;

/**
 * How the host enforces it. `nftables`: a chain per VM that every packet of its QEMU passes
 * (the policy can change while it runs). `qemu-restrict`: the host has no filter, so its VMs
 * get no network at all (QEMU's `restrict=on`) and only `none` is accepted.
 */
export const NetworkEnforcement = z.enum(['nftables', 'qemu-restrict']);
export type NetworkEnforcement = z.infer<typeof NetworkEnforcement>;

/** What `vm.show` says of a VM's network. */
export const NetworkInfo = z.strictObject({
  egress: Egress,
  enforcedBy: NetworkEnforcement,
  /** Packets (connection attempts, datagrams) the policy has refused since the VM's filter was made. */
  refused: z.number().int().optional(),
});
export type NetworkInfo = z.infer<typeof NetworkInfo>;

/** Changes a running VM's policy; it holds from the next packet on, for connections already open too. */
export const VmNetworkRequest = z.strictObject({
  id: VmId,
  network: NetworkPolicy,
  key: IdempotencyKey.optional(),
});
export type VmNetworkRequest = z.infer<typeof VmNetworkRequest>;
