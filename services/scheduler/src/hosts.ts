import type { NatsConnection } from '@nats-io/nats-core';
import { HostdClient } from '@forky/bus';
import type { Heartbeat, HostStatus, VmInfo } from '@forky/contract';
import type { HostView } from './host-view.js';
import { beatStatus } from './placement.js';
import { StartByClient, hostGone, mayStillStart, startWindowMs } from './deadlines.js';

/** One host's last heartbeat, with its liveness. */
export interface HostBeat {
  status: HostStatus;
  vms: VmInfo[];
  snapshotIds: string[];
}

/**
 * The hosts as their heartbeats show them, and the clients that call them. A call made through
 * `onHost` fails once its host is seen gone, instead of waiting for its whole deadline.
 */
export class Hosts {
  constructor(
    private readonly nc: NatsConnection,
    /** Heartbeats, followed on their subjects (seeded from the hosts bucket). */
    private readonly view: HostView<Heartbeat>,
    /** How long a request may take on its host (a fork of many children is long). */
    private readonly timeoutMs: number,
  ) {}

  /** Every host's liveness and last report, by id. */
  statuses(): HostStatus[] {
    return this.beats().map((b) => b.status);
  }

  /** Every host's last heartbeat, with its liveness, by id. */
  beats(): HostBeat[] {
    const now = Date.now();
    const out: HostBeat[] = [];
    for (const hb of this.view.values()) out.push({ status: beatStatus(hb, now), vms: hb.vmList, snapshotIds: hb.snapshotIds });
    return out.sort((a, b) => a.status.id.localeCompare(b.status.id));
  }

  /** The longest start window of any host: how long a call sent to one may still start there. */
  longestStartWindowMs(): number {
    return Math.max(0, ...this.view.values().map((b) => startWindowMs(b.intervalMs)));
  }

  /** A plain client of one host: its calls wait out their own deadline, whatever the host's liveness. */
  client(id: string): HostdClient {
    return new HostdClient(this.nc, id, { timeoutMs: this.timeoutMs });
  }

  /** A call to a host that fails once the host is seen down and can no longer start it. */
  async onHost<T>(host: string, fn: (c: HostdClient) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    const c = new StartByClient(this.nc, host, { timeoutMs: this.timeoutMs }, startWindowMs(this.view.get(host)?.intervalMs), ac.signal);
    try {
      return await Promise.race([fn(c), this.#whenDown(host, ac.signal, () => c.latestStartBy)]);
    } finally {
      ac.abort();
    }
  }

  /**
   * Rejects once `host` stops reporting (misses MISSED_BEATS heartbeats) or reports as a new
   * process: a request in flight to a host that died would otherwise wait for its whole deadline,
   * and one to a host that restarted would never be answered (the new process re-adopts VMs, not
   * requests). A host that stopped reporting may only be stopped: it is given up once past
   * `startBy()` (and the clock skew allowed), when it refuses what it was sent, however late it
   * reads it.
   */
  #whenDown(host: string, signal: AbortSignal, startBy: () => number): Promise<never> {
    const instance = this.view.get(host)?.instance;
    return new Promise((_, reject) => {
      const timer = setInterval(() => {
        const hb = this.view.get(host);
        if (!hb) return;
        const down = !beatStatus(hb, Date.now()).alive;
        const restarted = !!instance && hb.instance !== instance;
        // Alive, or quiet but still able to start what it was sent: keep waiting.
        if (!restarted && (!down || mayStillStart(startBy()))) return;
        clearInterval(timer);
        reject(hostGone(host, hb.ts, down, startBy()));
      }, 500);
      signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    });
  }
}
