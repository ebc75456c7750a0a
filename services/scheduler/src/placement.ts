import { CapacityError, ForkyError, NotFoundError } from '@forky/base';
import { Heartbeat, type HostStatus } from '@forky/contract';

/** A host is down once it has missed this many heartbeats. */
export const MISSED_BEATS = 3;

export function hostStatus(raw: unknown, now: number): HostStatus | undefined {
  const hb = Heartbeat.safeParse(raw);
  return hb.success ? beatStatus(hb.data, now) : undefined;
}

/** Whether a host whose last beat is `hb` is up at `now`. */
export function isAlive(hb: { ts: number; intervalMs: number }, now: number): boolean {
  return now - hb.ts <= MISSED_BEATS * hb.intervalMs;
}

/** A checked heartbeat's host, alive or not at `now` (its VM list, however it is held, left out). */
export function beatStatus(hb: Omit<Heartbeat, 'vmList'> & { vmList?: unknown }, now: number): HostStatus {
  const { ts, intervalMs: _n, instance: _i, vmList: _v, snapshotIds: _s, ...info } = hb;
  return { ...info, alive: isAlive(hb, now), lastSeen: new Date(ts).toISOString() };
}

/**
 * Picks a host for `count` VMs needing `memMiB` (and `gpus` free passthrough GPUs) each: the
 * pinned one if asked (it must be up and have the GPUs), else the live host with the most free
 * memory that can take them. Heartbeats lag: hostd settles GPUs itself and refuses one too many.
 */
export function pickHost(hosts: readonly HostStatus[], need: { memMiB: number; count: number; gpus?: number }, pin?: string): string {
  const gpus = (need.gpus ?? 0) * need.count;
  if (pin) {
    const h = hosts.find((x) => x.id === pin);
    if (!h) throw new NotFoundError('host', pin);
    if (!h.alive) throw new ForkyError('UNAVAILABLE', `host ${pin} is down (last seen ${h.lastSeen})`, { details: { field: 'host' } });
    if (h.gpus.free < gpus)
      throw new CapacityError(`host ${pin} has ${h.gpus.free} free GPU(s) of ${h.gpus.total}; ${gpus} asked`, { field: 'gpus' });
    return pin;
  }
  const live = hosts.filter((h) => h.alive);
  if (live.length === 0) throw new ForkyError('UNAVAILABLE', 'no host is up: start hostd (forky up) and wait for its first heartbeat');
  const withGpus = live.filter((h) => h.gpus.free >= gpus);
  if (withGpus.length === 0) {
    const total = live.reduce((a, h) => a + h.gpus.total, 0);
    throw new CapacityError(
      total === 0
        ? `no live host has a GPU bound to vfio-pci; ${gpus} asked`
        : `no host has ${gpus} free GPU(s): ${live
            .filter((h) => h.gpus.total > 0)
            .map((h) => `${h.id} ${h.gpus.free} of ${h.gpus.total}`)
            .join(', ')} free`,
      { field: 'gpus' },
    );
  }
  const fit = withGpus.filter((h) => h.memFreeMiB >= need.memMiB * need.count);
  if (fit.length === 0) {
    const most = Math.max(...withGpus.map((h) => h.memFreeMiB));
    throw new CapacityError(`no host has ${need.memMiB * need.count} MiB free for ${need.count} VM(s); the most free is ${most} MiB`);
  }
  // Two random choices, the one with more memory free: heartbeats lag the placements made since,
  // and "the most free" alone would send every request between two beats to the same host.
  const i = Math.floor(Math.random() * fit.length);
  const j = (i + 1 + Math.floor(Math.random() * (fit.length - 1))) % fit.length;
  const [a, b] = [fit[i] as HostStatus, fit[j] as HostStatus];
  return (fit.length === 1 || a.memFreeMiB >= b.memFreeMiB ? a : b).id;
}

/**
 * Where the children of one fork go: all at home (locality: the snapshot is there), all on a
 * pinned host, or spread over the live hosts by free memory.
 */
export function placeChildren(
  hosts: readonly HostStatus[],
  home: string,
  count: number,
  childCostMiB: number,
  req: { host?: string; spread?: boolean },
): Map<string, number> {
  if (req.host) {
    pickHost(hosts, { memMiB: childCostMiB, count }, req.host);
    return new Map([[req.host, count]]);
  }
  if (!req.spread) {
    pickHost(hosts, { memMiB: childCostMiB, count }, home);
    return new Map([[home, count]]);
  }
  // A child costs what the host's children really cost (their median Pss), once it has any.
  const live = hosts
    .filter((h) => h.alive)
    .map((h) => ({ id: h.id, free: h.memFreeMiB, cost: h.childPssMiB > 0 ? h.childPssMiB : childCostMiB }));
  if (live.length === 0) pickHost(hosts, { memMiB: childCostMiB, count });
  // Home first (its children need no transfer), then by free memory; round-robin over those with room.
  live.sort((a, b) => (a.id === home ? -1 : b.id === home ? 1 : b.free - a.free));
  const plan = new Map<string, number>();
  for (let i = 0, next = 0; i < count; i++) {
    const h = live.map((_, k) => live[(next + k) % live.length]).find((x) => x && x.free >= x.cost);
    if (!h) throw new CapacityError(`no room for ${count} children of ${childCostMiB} MiB across ${live.length} hosts`, { field: 'count' });
    plan.set(h.id, (plan.get(h.id) ?? 0) + 1);
    h.free -= h.cost;
    next = (live.indexOf(h) + 1) % live.length;
  }
  return plan;
}
