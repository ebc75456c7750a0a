import os from 'node:os';
import { isIP } from 'node:net';
import type { KV } from '@nats-io/kv';
import { z } from 'zod';
import { withDeadline, type Logger } from '@forky/base';
import { isReadableKey } from '@forky/bus';

/** How often the other hosts' addresses are read again; a new host is refused to VMs within this. */
export const PEERS_REFRESH_MS = 10_000;
const READ_MS = 5_000;
const Ip = z.union([z.ipv4(), z.ipv6()]);
/** Only what is needed of another host's heartbeat, checked: the entry is that host's writing. */
const PeerBeat = z.looseObject({ id: z.string().max(64), addrs: z.array(Ip).max(64).optional() });

/** This host's own addresses, for its heartbeat (loopback and link-local left out: every host has those). */
/** The hosts of `host:port` URLs that are IP literals (a discovered NATS server is announced by address). */
export function urlAddresses(urls: readonly string[]): string[] {
  const out: string[] = [];
  for (const u of urls) {
    const m = /^(?:[a-z]+:\/\/)?(?:\[([0-9a-fA-F:.]+)\]|([^:/\]]+))(?::\d+)?$/.exec(u);
    const host = m?.[1] ?? m?.[2];
    if (host && isIP(host) !== 0) out.push(host);
  }
  return out;
}

export function ownAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (!a.internal && !a.address.startsWith('fe80:')) out.push(a.address.split('%')[0] as string);
  }
  return [...new Set(out)].slice(0, 64);
}

/** Every other host's addresses as the hosts bucket has them (an unreadable entry is skipped). */
export async function peerAddresses(kv: KV, self: string, log: Logger): Promise<string[]> {
  const keys = await withDeadline(kv.keys(), READ_MS, 'listing the hosts bucket');
  const out = new Set<string>();
  const read = (async () => {
    for await (const key of keys) {
      if (key === self || !isReadableKey(key)) continue;
      const e = await kv.get(key);
      if (e?.operation !== 'PUT') continue;
      let value: unknown;
      try {
        value = JSON.parse(e.string());
      } catch {
        continue;
      }
      const beat = PeerBeat.safeParse(value);
      if (!beat.success || beat.data.id !== key) {
        log.debug({ key }, 'hosts bucket entry without usable addresses skipped');
        continue;
      }
      for (const a of beat.data.addrs ?? []) out.add(a);
    }
  })();
  try {
    await withDeadline(read, READ_MS, 'reading the hosts bucket');
  } finally {
    keys.stop();
  }
  return [...out];
}

/**
 * Keeps the filter's list of the other hosts' addresses up to date: read once now (before VMs are
 * served), then every PEERS_REFRESH_MS, after `upkeep` (the filter's own check that it is still
 * there). A failed read keeps the last list. Returns the stopper.
 */
export async function followPeers(
  kv: KV,
  self: string,
  filter: { setClusterHosts(addrs: readonly string[]): Promise<void> },
  log: Logger,
  upkeep: () => Promise<unknown> = async () => undefined,
  /** More addresses to refuse, read at each refresh (the NATS servers the client has discovered since it connected). */
  extra: () => string[] = () => [],
): Promise<() => void> {
  const refresh = async (): Promise<void> => {
    await upkeep().catch((err: unknown) => log.error({ err }, 'egress filter upkeep failed'));
    const own = ownAddresses();
    const addrs = [...(await peerAddresses(kv, self, log)), ...extra().filter((a) => isIP(a) !== 0)].filter((a) => !own.includes(a));
    await filter.setClusterHosts(addrs);
  };
  await refresh().catch((err: unknown) => log.warn({ err }, 'could not read the other hosts’ addresses'));
  const timer = setInterval(
    () => void refresh().catch((err: unknown) => log.warn({ err }, 'could not refresh the other hosts’ addresses')),
    PEERS_REFRESH_MS,
  );
  timer.unref();
  return () => clearInterval(timer);
}
