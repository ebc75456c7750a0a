import { isIP } from 'node:net';
import { parseEgressRule, type EgressRule } from '@forky/contract';
import { ForkyError } from '@forky/base';

/** An address block with its host bits cleared, as nft takes it; `port` limits it to that destination port. */
export interface Block {
  family: 4 | 6;
  /** `A.B.C.D/N` or `X:X:X:X:X:X:X:X/N`. */
  cidr: string;
  port?: number;
}

function v4ToBig(addr: string): bigint {
  return addr.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function v6ToBig(addr: string): bigint {
  let text = addr.split('%')[0] as string;
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = v4ToBig(v4[1] as string);
    text = text.slice(0, -(v4[1] as string).length) + `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? (text.split('::') as [string, string]) : [text, undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function bigToV4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => ((n >> s) & 0xffn).toString()).join('.');
}

function bigToV6(n: bigint): string {
  const groups: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(((n >> s) & 0xffffn).toString(16));
  return groups.join(':');
}

/** The block of `rule` with its host bits cleared (nft refuses `10.1.2.3/8` in an interval set). */
export function toBlock(rule: EgressRule): Block {
  const bits = rule.family === 4 ? 32n : 128n;
  const value = rule.family === 4 ? v4ToBig(rule.addr) : v6ToBig(rule.addr);
  const hostBits = bits - BigInt(rule.prefix);
  const masked = (value >> hostBits) << hostBits;
  const text = rule.family === 4 ? bigToV4(masked) : bigToV6(masked);
  return { family: rule.family, cidr: `${text}/${rule.prefix}`, ...(rule.port !== undefined ? { port: rule.port } : {}) };
}

/** Parses an EgressAllowEntry-syntax entry into a block; a bad entry is a BAD_REQUEST naming `field`. */
export function parseBlock(entry: string, field: string): Block {
  const rule = parseEgressRule(entry);
  if (typeof rule === 'string')
    throw new ForkyError('BAD_REQUEST', `${field} entry ${JSON.stringify(entry)}: ${rule}`, { details: { field } });
  return toBlock(rule);
}

/** A single address as a block of one (/32 or /128); undefined if it is not an address. */
export function hostBlock(addr: string): Block | undefined {
  const bare = addr.replace(/^\[|\]$/g, '').split('%')[0] as string;
  const family = isIP(bare);
  if (family === 0) return undefined;
  return toBlock({ family: family as 4 | 6, addr: bare, prefix: family === 4 ? 32 : 128 });
}
