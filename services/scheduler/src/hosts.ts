import type { NatsConnection } from '@nats-io/nats-core';
import { z } from 'zod';
import { type ForkyError, type Logger } from '@forky/base';
import { HostdClient, logBadEntry } from '@forky/bus';
import { Heartbeat, VmInfo, type HostStatus } from '@forky/contract';
import type { HostView } from './host-view.js';
import { HostProbes } from './host-probe.js';
import { MISSED_BEATS, beatStatus, isAlive } from './placement.js';
import { StartByClient, hostGone, mayStillStart, startWindowMs } from './deadlines.js';

/**
 * A checked heartbeat. Its VM list is checked when first asked for: it is needed only once its
 * host is down (to show those VMs as lost), so checking every VM of every beat would cost each
 * placement in proportion to the VMs on the host. A beat sent after a change carries no list
 * (contract host.ts): `after` gives it the list of the beat before, from the same hostd process.
 */
export type Beat = Omit<Heartbeat, 'vmList'> & { readonly vmList: () => VmInfo[]; readonly after?: (prev: Beat) => Beat };

const BeatShape = Heartbeat.extend({ vmList: z.array(z.unknown()).optional() });
const VmList = z.array(VmInfo);
const none = (): VmInfo[] => [];

/** Checks a heartbeat's JSON text: undefined for one that is not valid; a VM list that is not is logged when read, and empty. */
export function beatParser(log: Logger): (body: string) => Beat | undefined {
  return (body) => {
    let raw: unknown;
    try {
      raw = JSON.parse(body);
    } catch {
      return undefined;
    }
    const r = BeatShape.safeParse(raw);
    if (!r.success) return undefined;
    const { vmList, ...beat } = r.data;
    if (!vmList) {
      // A new process's list is its own: a restarted host's old VMs are not carried over to it.
      const after = (prev: Beat): Beat => ({ ...beat, vmList: prev.instance === beat.instance ? prev.vmList : none });
      // Not enumerable: a status is the beat's other fields (placement.ts), sent to clients as is.
      return Object.defineProperty({ ...beat, vmList: none }, 'after', { value: after, enumerable: false });
    }
    let checked: VmInfo[] | undefined;
    return {
      ...beat,
      vmList: () => {
        if (checked) return checked;
        const list = VmList.safeParse(vmList);
        if (!list.success) logBadEntry(log, `heartbeat of ${beat.id}`, `vmList: ${list.error.issues[0]?.message ?? 'invalid'}`, body);
        return (checked = list.success ? list.data : []);
      },
    };
  };
}

/** One host's last heartbeat, with its liveness. */
export interface HostBeat {
  status: HostStatus;
  vms: VmInfo[];
  snapshotIds: string[];
}

/** A call to a host under way: given up (`fail`) once its host is seen gone. */
interface Watched {
  host: string;
  /** The host's process when the call was made (or first seen after, if it had not beaten yet). */
  instance: string | undefined;
  startBy(): number;
  fail(e: ForkyError): void;
}

/**
 * The hosts as their heartbeats show them, and the clients that call them. A call made through
 * `onHost` fails once its host is seen gone, instead of waiting for its whole deadline.
 */
export class Hosts {
  /** Each beat's status up and down, worked out once: only which one holds depends on the time. */
  readonly #statuses = new WeakMap<Beat, { up: HostStatus; down: HostStatus }>();
  readonly #calls = new Set<Watched>();
  readonly #probes: HostProbes;
  #ticker: NodeJS.Timeout | undefined;

  constructor(
    private readonly nc: NatsConnection,
    /** Heartbeats, followed on their subjects (seeded from the hosts bucket). */
    private readonly view: HostView<Beat>,
    /** How long a request may take on its host (a fork of many children is long). */
    private readonly timeoutMs: number,
    probeTimeoutMs?: number,
  ) {
    this.#probes = new HostProbes(nc, probeTimeoutMs);
  }

  /** Every host's liveness and last report, by id (shared: not to be changed by the caller). */
  statuses(): HostStatus[] {
    const now = Date.now();
    return this.view.values().map((hb) => this.#status(hb, now));
  }

  /** Every host's last heartbeat, with its liveness, by id. */
  beats(): HostBeat[] {
    const now = Date.now();
    return this.view.values().map((hb) => ({
      status: this.#status(hb, now),
      get vms() {
        return hb.vmList();
      },
      snapshotIds: hb.snapshotIds,
    }));
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
    const hb = this.view.get(host);
    const given = { aborted: false };
    const c = new StartByClient(this.nc, host, { timeoutMs: this.timeoutMs }, startWindowMs(hb?.intervalMs), given);
    let fail!: (e: ForkyError) => void;
    const gone = new Promise<never>((_, reject) => (fail = reject));
    const w: Watched = { host, instance: hb?.instance, startBy: () => c.latestStartBy, fail };
    this.#calls.add(w);
    this.#ticker ??= setInterval(() => this.#check(), 500);
    try {
      return await Promise.race([fn(c), gone]);
    } finally {
      given.aborted = true;
      this.#calls.delete(w);
      // Its probe, if any, goes with its last call (looked for only then: most hosts have none).
      if (this.#probes.has(host) && ![...this.#calls].some((x) => x.host === host)) this.#probes.forget(host);
      if (this.#calls.size === 0) {
        clearInterval(this.#ticker);
        this.#ticker = undefined;
      }
    }
  }

  #status(hb: Beat, now: number): HostStatus {
    let s = this.#statuses.get(hb);
    if (!s) {
      const up = Object.freeze(beatStatus(hb, hb.ts));
      s = { up, down: Object.freeze({ ...up, alive: false }) };
      this.#statuses.set(hb, s);
    }
    return isAlive(hb, now) ? s.up : s.down;
  }

  /**
   * Every 500 ms while calls are under way, one look at their hosts. A call is given up once its
   * host stops reporting (misses MISSED_BEATS heartbeats) or reports as a new process: a request
   * in flight to a host that died would otherwise wait for its whole deadline, and one to a host
   * that restarted would never be answered (the new process re-adopts VMs, not requests). A host
   * that stopped reporting may only be stopped: it is given up once past the call's start-by (and
   * the clock skew allowed), when it refuses what it was sent, however late it reads it, and
   * once it is asked directly (host.ping) and does not answer as the same process: a host too
   * busy to beat on time is not given up while it still answers.
   */
  #check(): void {
    const now = Date.now();
    for (const w of this.#calls) {
      const hb = this.view.get(w.host);
      if (!hb) continue;
      // A call made before its host was seen is the first process seen's.
      w.instance ??= hb.instance;
      const down = !isAlive(hb, now);
      if (!down) this.#probes.forget(w.host);
      const restarted = hb.instance !== w.instance;
      // Alive, or quiet but still able to start what it was sent: keep waiting.
      if (!restarted && (!down || mayStillStart(w.startBy(), now))) continue;
      let asked: string | undefined;
      if (!restarted) {
        // An answer counts as long as a beat would; none yet: a question is on its way.
        const a = this.#probes.look(w.host, now, MISSED_BEATS * hb.intervalMs);
        if (!a) continue;
        // The same process, or one that replied without saying which (an error: a ping read too late).
        if ('alive' in a && (a.alive === undefined || a.alive === w.instance)) continue;
        asked = 'alive' in a ? `a new process answers (${a.alive}); the request in flight was lost` : a.gone;
      }
      this.#calls.delete(w);
      w.fail(hostGone(w.host, hb.ts, down, w.startBy(), asked));
    }
  }
}
