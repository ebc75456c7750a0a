import { createHash } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { ConflictError, DeadlineError, ForkyError, asForkyError, delay, type Logger } from '@forky/base';
import { RemoteError } from '@forky/contract';

interface Entry {
  state: 'pending' | 'done' | 'failed';
  hash: string;
  owner: string;
  leaseUntil: number;
  reply?: unknown;
  error?: { code: string; message: string };
}

/** A stable digest of a request, without its key: the same key must mean the same request. */
export function requestHash(endpoint: string, req: Record<string, unknown>): string {
  const { key: _key, ...rest } = req;
  const canon = JSON.stringify(rest, Object.keys(rest).sort());
  return createHash('sha256').update(`${endpoint}\n${canon}`).digest('hex').slice(0, 32);
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

  async run<T>(key: string, hash: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const claim = (): string => JSON.stringify({ state: 'pending', hash, owner: this.owner, leaseUntil: Date.now() + this.leaseMs } satisfies Entry);
      try {
        return await this.#work(key, hash, await this.kv.create(key, claim()), fn);
      } catch (e) {
        if (!isClaimLost(e)) throw e;
      }
      const got = await this.kv.get(key);
      if (!got || got.operation !== 'PUT') continue;
      const entry = got.json<Entry>();
      if (entry.hash !== hash) throw new ConflictError(`idempotency key ${key} was already used for a different request`, { field: 'key' });
      if (entry.state === 'done') return entry.reply as T;
      if (entry.state === 'failed' || entry.leaseUntil < Date.now()) {
        // A failed request may be retried; a lapsed lease means its owner died.
        try {
          return await this.#work(key, hash, await this.kv.update(key, claim(), got.revision), fn);
        } catch (e) {
          if (!isClaimLost(e)) throw e;
          continue;
        }
      }
      if (Date.now() > deadline) throw new DeadlineError(`request ${key} (running on scheduler ${entry.owner})`, timeoutMs);
      await delay(Math.min(200, Math.max(10, entry.leaseUntil - Date.now())));
    }
  }

  async #work<T>(key: string, hash: string, revision: number, fn: () => Promise<T>): Promise<T> {
    let rev = revision;
    const renew = setInterval(() => {
      const v = JSON.stringify({ state: 'pending', hash, owner: this.owner, leaseUntil: Date.now() + this.leaseMs } satisfies Entry);
      this.kv.update(key, v, rev).then(
        (r) => (rev = r),
        (err: unknown) => this.log.warn({ err, key }, 'lease renewal failed'),
      );
    }, Math.max(100, this.leaseMs / 3));
    try {
      const reply = await fn();
      clearInterval(renew);
      await this.kv.put(key, JSON.stringify({ state: 'done', hash, owner: this.owner, leaseUntil: 0, reply } satisfies Entry));
      return reply;
    } catch (e) {
      clearInterval(renew);
      const fe = asForkyError(e);
      await this.kv
        .put(key, JSON.stringify({ state: 'failed', hash, owner: this.owner, leaseUntil: 0, error: { code: fe.code, message: fe.message } } satisfies Entry))
        .catch(() => undefined);
      throw fe instanceof RemoteError ? new ForkyError(fe.code, fe.message, { cause: fe, ...(fe.details ? { details: fe.details } : {}) }) : fe;
    }
  }
}

/** kv.create/update refused: someone else wrote the key first. */
function isClaimLost(e: unknown): boolean {
  const err = e as { code?: number; api_error?: { err_code?: number }; message?: string };
  return err?.api_error?.err_code === 10071 || /wrong last sequence/i.test(err?.message ?? '');
}
