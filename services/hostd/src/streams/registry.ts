import { randomBytes } from 'node:crypto';
import { CapacityError, ConflictError, ForkyError } from '@forky/base';
import type { StreamOpenReply } from '@forky/contract';
import type { Bridge } from './bridge.js';

export interface StreamLimits {
  /** Streams per VM (exec, attach, files, watch), and port connections per VM apart (`forky port`: many at once). */
  perVm: number;
  portsPerVm: number;
  /** Streams on this host, and port connections on this host apart: busy forwards do not starve other tenants' exec and files. */
  perHost: number;
  portsPerHost: number;
  /** How long a key's open is remembered. */
  keyTtlMs: number;
}

/** 64 + 256 per VM (plus 16 one-shot calls) stays under the agent's 512 streams a session. */
export const DEFAULT_STREAM_LIMITS: StreamLimits = { perVm: 64, portsPerVm: 256, perHost: 1024, portsPerHost: 2048, keyTtlMs: 15 * 60_000 };

export type StreamPool = 'stream' | 'port';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** 22 characters of [A-Za-z0-9] (131 bits), drawn without bias: a stream's subjects are its only lock. */
export function newSid(): string {
  let out = '';
  while (out.length < 22) {
    for (const b of randomBytes(32)) {
      if (b < 248 && out.length < 22) out += ALPHABET[b % 62];
    }
  }
  return out;
}

/** Errors of an open that ran nothing in the guest (the agent refused it): its key may be given again. */
const notRun = new WeakSet<object>();
export function ranNothing<E extends object>(e: E): E {
  notRun.add(e);
  return e;
}

interface Keyed {
  fingerprint: string;
  reply: Promise<StreamOpenReply>;
  at: number;
}

/**
 * The streams open on this host, by sid and by VM, within the limits; and the opens made under a
 * key, so the same key again gets the same stream. A slot is taken before the guest is asked, so
 * concurrent opens cannot pass a limit together.
 */
export class StreamRegistry {
  readonly #streams = new Map<string, Bridge>();
  /** Slots taken per VM: open streams and opens under way. */
  readonly #perVm = new Map<string, number>();
  readonly #total: Record<StreamPool, number> = { stream: 0, port: 0 };
  readonly #keys = new Map<string, Keyed>();

  constructor(
    readonly limits: StreamLimits = DEFAULT_STREAM_LIMITS,
    /** Work under way on a VM (engine.work): a slot and a one-shot call are, until given back. */
    private readonly onWork: (vmId: string) => () => void = () => () => undefined,
  ) {}

  /** Work on `vmId` that holds no slot (a one-shot call, a detached exec's start); the returned function ends it, once. */
  work(vmId: string): () => void {
    const end = this.onWork(vmId);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      end();
    };
  }

  get size(): number {
    return this.#streams.size;
  }

  get(sid: string): Bridge | undefined {
    return this.#streams.get(sid);
  }

  all(): Bridge[] {
    return [...this.#streams.values()];
  }

  /** Takes a slot for a stream (or a port connection) of `vmId`, or refuses naming the limit; the returned function gives it back. */
  reserve(vmId: string, pool: StreamPool = 'stream'): () => void {
    const slot = `${pool}:${vmId}`;
    const n = this.#perVm.get(slot) ?? 0;
    const [max, what] = pool === 'port' ? [this.limits.portsPerVm, 'port connections'] : [this.limits.perVm, 'streams'];
    if (n >= max) throw new CapacityError(`VM ${vmId} has ${n} ${what} open, the most it may (${max} per VM)`);
    const hostMax = pool === 'port' ? this.limits.portsPerHost : this.limits.perHost;
    if (this.#total[pool] >= hostMax)
      throw new CapacityError(`this host has ${this.#total[pool]} ${what} open, the most it may (${hostMax} per host)`);
    this.#perVm.set(slot, n + 1);
    this.#total[pool]++;
    // From before the guest is asked until the stream's end: an idle rule never pauses it under way.
    const endWork = this.work(vmId);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      endWork();
      this.#total[pool]--;
      const left = (this.#perVm.get(slot) ?? 1) - 1;
      if (left > 0) this.#perVm.set(slot, left);
      else this.#perVm.delete(slot);
    };
  }

  /** Adds an open stream; it leaves, and gives its slot back, once its end is out. */
  add(bridge: Bridge, release: () => void): void {
    this.#streams.set(bridge.sid, bridge);
    void bridge.done.finally(() => {
      this.#streams.delete(bridge.sid);
      release();
    });
  }

  /**
   * Runs `open` once per key: the same key and request again get its reply (still pending, or
   * done); the same key for another request is a CONFLICT. An open that failed before it called
   * `sent` (the OPEN went to the guest), or with an error marked `ranNothing`, is forgotten, so a
   * retry runs it again. Any other failure may have run it (a detached process outlives a lost
   * answer): repeats get UNAVAILABLE, never a second run.
   */
  keyed(
    key: string,
    fingerprint: string,
    open: (sent: () => void) => Promise<StreamOpenReply>,
    now = Date.now(),
  ): Promise<StreamOpenReply> {
    for (const [k, v] of this.#keys) if (now - v.at > this.limits.keyTtlMs) this.#keys.delete(k);
    const seen = this.#keys.get(key);
    if (seen) {
      if (seen.fingerprint !== fingerprint)
        return Promise.reject(new ConflictError(`key ${key} was used for another request`, { field: 'key' }));
      return seen.reply.then((r) => this.#stillOpen(key, r));
    }
    let sent = false;
    const reply = open(() => (sent = true));
    const entry: Keyed = { fingerprint, reply, at: now };
    this.#keys.set(key, entry);
    reply.catch((e: unknown) => {
      if (this.#keys.get(key) !== entry) return;
      if (!sent || (typeof e === 'object' && e !== null && notRun.has(e))) this.#keys.delete(key);
      else {
        const unknown = new ForkyError('UNAVAILABLE', `the first attempt's outcome is unknown: it may have run (key ${key})`, {
          details: { field: 'key' },
        });
        entry.reply = Promise.reject(unknown);
        entry.reply.catch(() => undefined);
      }
    });
    return reply;
  }

  /** A repeat finds its stream; one whose stream ended meanwhile cannot be given it again. */
  #stillOpen(key: string, r: StreamOpenReply): StreamOpenReply {
    const bridge = r.stream && this.#streams.get(r.stream.sid);
    if (r.stream && !bridge)
      throw new ConflictError(`the stream opened under key ${key} has ended (open another under a new key)`, { field: 'key' });
    // A retry after a lost reply: its client lives, so the stream must wait for its first credit.
    bridge?.touch();
    return r;
  }
}
