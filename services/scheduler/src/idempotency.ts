import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { DeadlineError, ForkyError, asForkyError, delay, type Logger } from '@forky/base';
import { entryValue, retryTransient } from '@forky/bus';
import { RemoteError, toWireError } from '@forky/contract';
import { Outcomes, type Waiting } from './outcomes.js';
import { Entry, isClaimLost, keyReused, type Recorded } from './records.js';

export { keyReused, requestHash, underWay, type Recorded } from './records.js';

export interface IdempotencyOptions {
  /** Follow the whole bucket for outcomes other schedulers write (a scheduler does; a lone test of this class need not). */
  watch?: boolean;
  /** For reads from the bucket stream's leader (unrecorded); `bucket` is the requests bucket's name. */
  leader?: { nc: NatsConnection; bucket: string };
}

/**
 * Runs a request once per idempotency key across every scheduler, its outcome stored, so a
 * repeat gets the same reply. `run` claims the key in the requests bucket with a lease the owner
 * renews while it works; a scheduler that dies stops renewing, and the next one to see the key
 * takes it over once the lease runs out. `runUnclaimed` is for a run nobody else can be making
 * (jobs.ts proves it): it writes nothing until its outcome, unless it lasts longer than a third
 * of a lease, when it claims the key the same way. hostd dedupes the same key, so work started by
 * a dead scheduler is joined, not repeated.
 */
export class Idempotency {
  readonly #outcomes: Outcomes;

  constructor(
    private readonly kv: KV,
    private readonly owner: string,
    private readonly leaseMs: number,
    private readonly log: Logger,
    private readonly opts: IdempotencyOptions = {},
  ) {
    const nc = opts.leader?.nc;
    this.#outcomes = new Outcomes(kv, log, { watch: !!opts.watch, ...(nc ? { closed: () => nc.isClosed() } : {}) });
  }

  /** What the bucket says about a key now. */
  async peek(key: string): Promise<Recorded | undefined> {
    const e = await retryTransient('requests get', () => this.kv.get(key), { log: this.log });
    const entry = entryValue(Entry, e, this.log);
    return entry && e ? { entry, revision: e.revision } : undefined;
  }

  /**
   * Whether the bucket holds nothing at all under `key` (no record, no garbage, no delete marker),
   * read from the stream's leader: a replica answering a direct get may not have a record just
   * written. Any failure to tell says no (the caller then claims the key, which is always safe).
   */
  async unrecorded(key: string): Promise<boolean> {
    const leader = this.opts.leader;
    try {
      if (!leader) return (await this.kv.get(key)) === null;
      const stream = `KV_${leader.bucket}`;
      const r = await leader.nc.request(
        `$JS.API.STREAM.MSG.GET.${stream}`,
        JSON.stringify({ last_by_subj: `$KV.${leader.bucket}.${key}` }),
        {
          timeout: 5_000,
        },
      );
      return (r.json<{ error?: { err_code?: number } }>().error?.err_code ?? 0) === 10037;
    } catch (err) {
      this.log.warn({ err, key }, 'reading a request record failed; the key is claimed before the run');
      return false;
    }
  }

  /** Waits for the request under `key` to end (a record after revision `since` that is done, or failed for good). */
  outcome<T>(key: string, hash: string, since: number, timeoutMs: number): Promise<T> {
    return this.#outcomes.wait<T>(key, hash, since, timeoutMs).done;
  }

  /** `outcome`, started now and ended by `cancel` if its request is never queued. */
  waitFor<T>(key: string, hash: string, since: number, timeoutMs: number): Waiting<T> {
    return this.#outcomes.wait<T>(key, hash, since, timeoutMs);
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

  /** Runs `fn` for a key nothing else can be running (see the class): no write before its outcome, unless it lasts. */
  runUnclaimed<T>(key: string, hash: string, fn: () => Promise<T>, willRetry: (e: ForkyError) => boolean = () => false): Promise<T> {
    return this.#work(key, hash, undefined, fn, willRetry);
  }

  /** Stops following the bucket; waits under way end by their own deadlines. */
  stop(): void {
    this.#outcomes.stop();
  }

  /** A claim or a renewal of it: this scheduler holds the key for one more lease. */
  #pending(hash: string): string {
    return JSON.stringify({ state: 'pending', hash, owner: this.owner, leaseUntil: Date.now() + this.leaseMs } satisfies Entry);
  }

  /** Runs `fn` under the claim at `revision`, or under none yet (claimed at the first renewal, if it lasts that long). */
  async #work<T>(
    key: string,
    hash: string,
    revision: number | undefined,
    fn: () => Promise<T>,
    willRetry: (e: ForkyError) => boolean,
  ): Promise<T> {
    let rev = revision;
    let writing = false;
    let lost = false;
    const renew = setInterval(
      () => {
        // One write at a time, each on the revision the last one made; once someone else wrote the key, no more.
        if (writing || lost) return;
        writing = true;
        (rev === undefined ? this.kv.create(key, this.#pending(hash)) : this.kv.update(key, this.#pending(hash), rev))
          .then(
            (r) => (rev = r),
            (err: unknown) => {
              lost = isClaimLost(err);
              this.log.warn(
                { err, key },
                lost ? 'the key was written by another run; its lease is no longer renewed' : 'lease renewal failed',
              );
            },
          )
          .finally(() => (writing = false));
      },
      Math.max(100, this.leaseMs / 3),
    );
    try {
      const reply = await fn();
      clearInterval(renew);
      await this.#record(key, { state: 'done', hash, owner: this.owner, leaseUntil: 0, reply });
      return reply;
    } catch (e) {
      clearInterval(renew);
      const fe = asForkyError(e);
      const retry = willRetry(fe);
      const failed: Entry = {
        state: 'failed',
        hash,
        owner: this.owner,
        leaseUntil: 0,
        error: toWireError(fe).error,
        ...(retry ? { retry } : {}),
      };
      await this.#record(key, failed).catch(() => undefined);
      throw fe instanceof RemoteError
        ? new ForkyError(fe.code, fe.message, { cause: fe, ...(fe.details ? { details: fe.details } : {}) })
        : fe;
    }
  }

  /** Stores a run's outcome and tells this process's waiters at once (others see it through their watch). */
  async #record(key: string, entry: Entry): Promise<void> {
    const revision = await retryTransient('requests put', () => this.kv.put(key, JSON.stringify(entry)), { log: this.log });
    this.#outcomes.seen(key, revision, entry);
  }
}
