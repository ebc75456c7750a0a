import type { Logger } from '@forky/base';
import type { GuestSession } from './types.js';

export interface SessionCacheOptions {
  /** A session quiet for longer is probed before it is handed out again. */
  quietMs: number;
  /** How long that probe may take. */
  probeMs: number;
  log?: Logger | undefined;
}

interface Entry {
  session: Promise<GuestSession>;
  /** The session once made and not being probed: handed out as it is while it is not quiet. */
  ready: GuestSession | undefined;
  open: boolean;
  /** The session once made (kept for closeAll). */
  made?: GuestSession;
}

/**
 * One agent session per key (a VM process), made on first use and again once it closed or fails
 * a probe. Why the probe: the guest's init respawns an agent that dies, the chardev stays
 * connected, and the new agent ignores everything until a new HELLO, so a quiet session may be
 * dead although its socket is open. Every live session is also kept in a set, so close() ends them.
 */
export class SessionCache<K extends object> {
  readonly #entries = new WeakMap<K, Entry>();
  readonly #live = new Set<Entry>();
  /** Bumped by closeAll(): a session still connecting then is closed when it arrives. */
  #epoch = 0;

  constructor(private readonly opts: SessionCacheOptions) {}

  get(key: K, connect: () => Promise<GuestSession>): Promise<GuestSession> {
    const e = this.#entries.get(key);
    if (!e?.open) return this.#connect(key, connect);
    const s = e.ready;
    if (!s || s.probe === undefined || s.lastHeardMs === undefined || Date.now() - s.lastHeardMs <= this.opts.quietMs) return e.session;
    // Callers that come while it is probed wait for the outcome: the same session, or a new one.
    e.ready = undefined;
    e.session = s.probe(this.opts.probeMs).then(
      () => {
        e.ready = s;
        return s;
      },
      (err: unknown) => {
        this.opts.log?.warn({ err }, 'forky-agent session did not answer a probe: connecting again');
        const current = this.#entries.get(key) === e && e.open;
        e.open = false;
        s.close();
        // Closed meanwhile (the VM destroyed, hostd stopping): no new session for it.
        if (!current) throw err;
        return this.#connect(key, connect);
      },
    );
    return e.session;
  }

  /** The key's session if one is open (or being made), without making one. */
  current(key: K): Promise<GuestSession> | undefined {
    const e = this.#entries.get(key);
    return e?.open ? e.session : undefined;
  }

  /** Closes the key's session (its streams end GONE now). */
  close(key: K): void {
    const e = this.#entries.get(key);
    if (!e) return;
    e.open = false;
    this.#entries.delete(key);
    e.session.then(
      (s) => s.close(),
      () => undefined,
    );
  }

  /** Closes every session, and those still connecting once they arrive; later get()s make new ones. */
  closeAll(): void {
    this.#epoch++;
    for (const e of [...this.#live]) {
      e.open = false;
      e.made?.close();
    }
    this.#live.clear();
  }

  get liveCount(): number {
    return this.#live.size;
  }

  #connect(key: K, connect: () => Promise<GuestSession>): Promise<GuestSession> {
    const epoch = this.#epoch;
    const e: Entry = { session: connect(), ready: undefined, open: true };
    e.session.then(
      (s) => {
        e.made = s;
        if (epoch !== this.#epoch || !e.open) {
          e.open = false;
          s.close();
        } else {
          this.#live.add(e);
          e.ready ??= s;
        }
        void s.closed.then(() => {
          e.open = false;
          this.#live.delete(e);
        });
      },
      () => (e.open = false),
    );
    this.#entries.set(key, e);
    return e.session;
  }
}
