import { createHash } from 'node:crypto';
import type { KV, KvEntry } from '@nats-io/kv';
import { ConflictError, DeadlineError, ForkyError, asForkyError, delay, type Logger } from '@forky/base';
import { z } from 'zod';
import { entryValue, retryTransient } from '@forky/bus';
import { RemoteError, WireError, fromWireError, toWireError } from '@forky/contract';

/**
 * A key's record in the requests bucket. It is read back, so it is checked: a record that is
 * not one (written by hand, or garbage) is logged and counts as no record. Loose, so a field a
 * newer scheduler adds does not make an older one drop the record.
 */
const Entry = z.looseObject({
  state: z.enum(['pending', 'done', 'failed']),
  hash: z.string().max(128),
  owner: z.string().max(256),
  leaseUntil: z.number(),
  reply: z.unknown().optional(),
  /** The failure, as a caller gets it: code, message and the field at fault, never a stack. */
  error: WireError.shape.error.optional(),
  /** A failed attempt that will be made again (its job goes back to the queue). */
  retry: z.boolean().optional(),
});
type Entry = z.infer<typeof Entry>;

/** A request under this key is being run, or will be run again: a new submission would be a duplicate. */
export function underWay(entry: Entry, now = Date.now()): boolean {
  return (entry.state === 'pending' && entry.leaseUntil > now) || (entry.state === 'failed' && !!entry.retry);
}

/** The one error for a key sent again with a different request. */
export function keyReused(key: string): ConflictError {
  return new ConflictError(`idempotency key ${key} was already used for a different request`, { field: 'key' });
}

export interface Recorded {
  entry: Entry;
  revision: number;
}

/** A stable digest of a request, without its key: the same key must mean the same request. */
export function requestHash(endpoint: string, req: Record<string, unknown>): string {
  const { key: _key, ...rest } = req;
  return createHash('sha256')
    .update(`${endpoint}\n${canonical(rest)}`)
    .digest('hex')
    .slice(0, 32);
}

/** JSON with every object's keys sorted, at every depth (a replacer array would drop nested keys). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/**
 * Runs a request once per idempotency key across every scheduler. The key is claimed in the
 * requests bucket with a lease the owner renews while it works; a scheduler that dies stops
 * renewing, and the next one to see the key takes it over once the lease runs out. hostd dedupes
 * the same key, so work started by a dead scheduler is joined, not repeated. The outcome is
 * stored, so a repeat gets the same reply.
 */
export class Idempotency {
  constructor(
    private readonly kv: KV,
    private readonly owner: string,
    private readonly leaseMs: number,
    private readonly log: Logger,
  ) {}

  /** What the bucket says about a key now. */
  async peek(key: string): Promise<Recorded | undefined> {
    const e = await retryTransient('requests get', () => this.kv.get(key), { log: this.log });
    const entry = entryValue(Entry, e, this.log);
    return entry && e ? { entry, revision: e.revision } : undefined;
  }

  /**
   * Waits for the request under `key` to end (a write after revision `since` that is done, or
   * failed for good) and returns its reply or throws its error, whichever scheduler ran it. A
   * watch tells at once; a read every 2 s is the safety net, since a watch can stall for tens of
   * seconds while the cluster replaces a dead node.
   */
  outcome<T>(key: string, hash: string, since: number, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let watch: { stop(): void } | undefined;
      const finish = (f: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearInterval(poll);
        watch?.stop();
        f();
      };
      const see = (e: KvEntry | null): void => {
        if (!e || e.revision <= since) return;
        const entry = entryValue(Entry, e, this.log);
        if (!entry) return;
        if (entry.hash !== hash) finish(() => reject(keyReused(key)));
        else if (entry.state === 'done') finish(() => resolve(entry.reply as T));
        else if (entry.state === 'failed' && !entry.retry)
          finish(() => reject(fromWireError({ error: entry.error ?? { code: 'INTERNAL', message: 'failed' } }, key)));
      };
      const timer = setTimeout(
        () =>
          finish(() =>
            reject(
              new DeadlineError(
                `request ${key} (one not started by its deadline is failed, not run; one under way finishes: ask again with the same key for its outcome)`,
                timeoutMs,
              ),
            ),
          ),
        timeoutMs,
      );
      const poll = setInterval(() => void this.kv.get(key).then(see, () => undefined), 2_000);
      // A watch that fails to start, or ends in an error, leaves the poll: logged, never unhandled.
      this.kv
        .watch({ key })
        .then(async (w) => {
          watch = w;
          if (settled) return w.stop();
          for await (const e of w) see(e);
        })
        .catch((err: unknown) => this.log.warn({ err, key }, 'watching a request failed; reading it every 2 s instead'));
    });
  }

  /**
   * Runs `fn` once for `key`, or returns what an earlier run under it returned. `willRetry` says
   * whether a failure will be tried again (it is then recorded as such, and waiters keep waiting).
   */
  async run<T>(
    key: string,
    hash: string,
    timeoutMs: number,
    fn: () => Promise<T>,
    willRetry: (e: ForkyError) => boolean = () => false,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await this.#work(key, hash, await this.kv.create(key, this.#pending(hash)), fn, willRetry);
      } catch (e) {
        if (!isClaimLost(e)) throw e;
      }
      const got = await this.kv.get(key);
      if (!got || got.operation !== 'PUT') continue;
      const entry = entryValue(Entry, got, this.log);
      if (entry && entry.hash !== hash) throw keyReused(key);
      if (entry?.state === 'done') return entry.reply as T;
      if (!entry || entry.state === 'failed' || entry.leaseUntil < Date.now()) {
        // A failed request may be retried; a lapsed lease means its owner died; a record that is not one is no claim.
        try {
          return await this.#work(key, hash, await this.kv.update(key, this.#pending(hash), got.revision), fn, willRetry);
        } catch (e) {
          if (!isClaimLost(e)) throw e;
          continue;
        }
      }
      if (Date.now() > deadline) throw new DeadlineError(`request ${key} (running on scheduler ${entry.owner})`, timeoutMs);
      await delay(Math.min(200, Math.max(10, entry.leaseUntil - Date.now())));
    }
  }

  /** A claim or a renewal of it: this scheduler holds the key for one more lease. */
  #pending(hash: string): string {
    return JSON.stringify({ state: 'pending', hash, owner: this.owner, leaseUntil: Date.now() + this.leaseMs } satisfies Entry);
  }

  async #work<T>(key: string, hash: string, revision: number, fn: () => Promise<T>, willRetry: (e: ForkyError) => boolean): Promise<T> {
    let rev = revision;
    const renew = setInterval(
      () => {
        this.kv.update(key, this.#pending(hash), rev).then(
          (r) => (rev = r),
          (err: unknown) => this.log.warn({ err, key }, 'lease renewal failed'),
        );
      },
      Math.max(100, this.leaseMs / 3),
    );
    try {
      const reply = await fn();
      clearInterval(renew);
      const done = JSON.stringify({ state: 'done', hash, owner: this.owner, leaseUntil: 0, reply } satisfies Entry);
      await retryTransient('requests put', () => this.kv.put(key, done), { log: this.log });
      return reply;
    } catch (e) {
      clearInterval(renew);
      const fe = asForkyError(e);
      const retry = willRetry(fe);
      const failed = JSON.stringify({
        state: 'failed',
        hash,
        owner: this.owner,
        leaseUntil: 0,
        error: toWireError(fe).error,
        ...(retry ? { retry } : {}),
      } satisfies Entry);
      await retryTransient('requests put', () => this.kv.put(key, failed), { log: this.log }).catch(() => undefined);
      throw fe instanceof RemoteError
        ? new ForkyError(fe.code, fe.message, { cause: fe, ...(fe.details ? { details: fe.details } : {}) })
        : fe;
    }
  }
}

/** kv.create/update refused: someone else wrote the key first. */
function isClaimLost(e: unknown): boolean {
  const err = e as { code?: number; api_error?: { err_code?: number }; message?: string };
  return err?.api_error?.err_code === 10071 || /wrong last sequence/i.test(err?.message ?? '');
}
