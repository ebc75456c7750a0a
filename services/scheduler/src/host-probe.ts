import type { NatsConnection } from '@nats-io/nats-core';
import { DeadlineError, asForkyError } from '@forky/base';
import { HostdClient, outsideCaller } from '@forky/bus';
import { RemoteError } from '@forky/contract';

/** How long a probe waits: a host starved of CPU (100 TCG guests on 2 cores) answers within this. */
export const PROBE_TIMEOUT_MS = 5_000;
/** Probes in a row left unanswered before a host that is connected (it has responders) counts as gone. */
export const PROBE_TRIES = 3;

type Probe =
  | { state: 'asking'; timeouts: number }
  | { state: 'answered'; instance: string | undefined; at: number }
  | { state: 'timedOut'; timeouts: number }
  | { state: 'failed'; why: string; at: number };

/** What a probe found: the process that answered (undefined: it answered, but not which one it is), or why none did. */
export type ProbeAnswer = { alive: string | undefined } | { gone: string };

/**
 * Asks hosts directly (host.ping) whether they are there: the scheduler does so before it gives
 * up the calls under way on a host whose heartbeats stopped. A dead hostd has no responders at
 * once: gone. One that replies, even with an error (a ping it read too late), is there. One that
 * lets PROBE_TRIES pings in a row time out is hung: gone. One question per host at a time; an
 * answer counts for `freshMs`, like a heartbeat.
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
    if (p?.state === 'answered' && now - p.at <= freshMs) return { alive: p.instance };
    if (p?.state === 'failed' && now - p.at <= freshMs) return { gone: p.why };
    this.#ask(host, p?.state === 'timedOut' ? p.timeouts : 0);
    return undefined;
  }

  has(host: string): boolean {
    return this.#probes.has(host);
  }

  /** Forgets `host` (it beats again, or no call waits on it): an answer still on its way is dropped. */
  forget(host: string): void {
    this.#probes.delete(host);
  }

  #ask(host: string, timeouts: number): void {
    const asking: Probe = { state: 'asking', timeouts };
    this.#probes.set(host, asking);
    // Whoever's call led here (the ticker keeps the context of the call that started it), the ping
    // is the scheduler's own: no caller's deadline cuts it short.
    const ping = outsideCaller(() => new HostdClient(this.nc, host, { timeoutMs: this.timeoutMs }).call('host.ping', {}));
    const settle = (p: Probe): void => {
      // Forgotten, or asked anew, meanwhile: this answer is not the current one.
      if (this.#probes.get(host) === asking) this.#probes.set(host, p);
    };
    ping.then(
      (r) => settle({ state: 'answered', instance: r.instance, at: Date.now() }),
      (e: unknown) => {
        if (e instanceof RemoteError) return settle({ state: 'answered', instance: undefined, at: Date.now() });
        if (e instanceof DeadlineError && timeouts + 1 < PROBE_TRIES) return settle({ state: 'timedOut', timeouts: timeouts + 1 });
        const why = e instanceof DeadlineError ? `${PROBE_TRIES} pings unanswered (${this.timeoutMs} ms each)` : asForkyError(e).message;
        settle({ state: 'failed', why, at: Date.now() });
      },
    );
  }
}
