import type { NatsConnection } from '@nats-io/nats-core';
import { asForkyError } from '@forky/base';
import { HostdClient } from '@forky/bus';

/** How long a probe waits: a host starved of CPU (100 TCG guests on 2 cores) answers within this. */
export const PROBE_TIMEOUT_MS = 5_000;

type Probe = { state: 'asking' } | { state: 'answered'; instance: string; at: number } | { state: 'failed'; why: string; at: number };

/** What a probe found: the process that answered, or why none did. */
export type ProbeAnswer = { alive: string } | { gone: string };

/**
 * Asks hosts directly (host.ping) whether they are there: the scheduler does so before it gives
 * up the calls under way on a host whose heartbeats stopped. A dead hostd has no responders at
 * once; a hung one times out; a busy one answers late, but answers, and its calls go on. One
 * question per host at a time; its answer counts for `freshMs`, like a heartbeat.
 */
export class HostProbes {
  readonly #probes = new Map<string, Probe>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs = PROBE_TIMEOUT_MS,
  ) {}

  /** The answer about `host` if one is fresh at `now`; else undefined, with a question on its way. */
  look(host: string, now: number, freshMs: number): ProbeAnswer | undefined {
    const p = this.#probes.get(host);
    if (p?.state === 'asking') return undefined;
    if (p && now - p.at <= freshMs) return p.state === 'answered' ? { alive: p.instance } : { gone: p.why };
    this.#ask(host);
    return undefined;
  }

  /** Forgets what was found (a host that beats again needs no probe). */
  forget(host: string): void {
    if (this.#probes.get(host)?.state !== 'asking') this.#probes.delete(host);
  }

  #ask(host: string): void {
    this.#probes.set(host, { state: 'asking' });
    new HostdClient(this.nc, host, { timeoutMs: this.timeoutMs }).call('host.ping', {}).then(
      (r) => void this.#probes.set(host, { state: 'answered', instance: r.instance, at: Date.now() }),
      (e: unknown) => void this.#probes.set(host, { state: 'failed', why: asForkyError(e).message, at: Date.now() }),
    );
  }
}
