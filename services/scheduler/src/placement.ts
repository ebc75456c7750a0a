import { CapacityError, ForkyError, NotFoundError } from '@forky/base';
import { Heartbeat, type HostStatus } from '@forky/contract';

/** A host is down once it has missed three heartbeats. */
const MISSED_BEATS = 3;

export function hostStatus(raw: unknown, now: number): HostStatus | undefined {
  const hb = Heartbeat.safeParse(raw);
  return hb.success ? beatStatus(hb.data, now) : undefined;
}

/** A checked heartbeat's host, alive or not at `now`. */
export function beatStatus(hb: Heartbeat, now: number): HostStatus {
  const { ts, intervalMs, instance: _i, vmList: _v, snapshotIds: _s, ...info } = hb;
  return { ...info, alive: now - ts <= MISSED_BEATS * intervalMs, lastSeen: new Date(ts).toISOString() };
}

/**
 * Picks a host for `count` VMs needing `memMiB` each: the pinned one if asked (it must be up),
 * else the live host with the most free memory that can take them.
 */
export function pickHost(hosts: readonly HostStatus[], need: { memMiB: number; count: number }, pin?: string): string {
  if (pin) {
    const h = hosts.find((x) => x.id === pin);
    if (!h) throw new NotFoundError('host', pin);
    if (!h.alive) throw new ForkyError('UNAVAILABLE', `host ${pin} is down (last seen ${h.lastSeen})`, { details: { field: 'host' } });
    return pin;
  }
  const live = hosts.filter((h) => h.alive);
  if (live.length === 0) throw new ForkyError('UNAVAILABLE', 'no host is up: start hostd (forky up) and wait for its first heartbeat');
  const fit = live.filter((h) => h.memFreeMiB >= need.memMiB * need.count);
  if (fit.length === 0) {
    const most = Math.max(...live.map((h) => h.memFreeMiB));
    throw new CapacityError(`no host has ${need.memMiB * need.count} MiB free for ${need.count} VM(s); the most free is ${most} MiB`);
  }
  // Two random choices, the one with more memory free: heartbeats lag the placements made since,
  // and "the most free" alone would send every request between two beats to the same host.
  const i = Math.floor(Math.random() * fit.length);
  const j = (i + 1 + Math.floor(Math.random() * (fit.length - 1))) % fit.length;
  const [a, b] = [fit[i] as HostStatus, fit[j] as HostStatus];
  return (fit.length === 1 || a.memFreeMiB >= b.memFreeMiB ? a : b).id;
}
