import { SELF_FORK_RESULT_MAX, type VmState } from '@forky/contract';
import { SelfForkRefusal } from './self-fork-tree.js';

export interface ChildResult {
  vm: string;
  index: number;
  result?: unknown;
  ended?: string;
}

interface LastFork {
  children: ChildResult[];
  /** `--wait`s of the parent, told whenever a child of this fork reports or ends. */
  waiters: Set<() => void>;
  /** A `--spread` fork: its children elsewhere report to their own hosts, so it cannot be waited for. */
  spread?: boolean;
}

/**
 * What self-forked children report for their parent (`forky-fork --result`), kept in memory on the
 * parent's host for the parent's last self-fork only: at most that fork's count of results, each
 * at most SELF_FORK_RESULT_MAX bytes of JSON. Gone with the parent, or with its next self-fork.
 */
export class SelfForkResults {
  readonly #forks = new Map<string, LastFork>();
  /** Ends each `--wait` in progress (its timer cleared), for close(). */
  readonly #stops = new Set<() => void>();
  #closed = false;

  /** `stateOf`: a VM's state on this host, undefined once it is gone. */
  constructor(private readonly stateOf: (id: string) => VmState | undefined) {}

  /** The parent's new self-fork: its children replace the last fork's (whose waiters end). */
  forked(parent: string, children: ReadonlyArray<{ vm: string; index: number }>, spread = false): void {
    this.#end(parent);
    this.#forks.set(parent, {
      children: children.map((c) => ({ vm: c.vm, index: c.index })),
      waiters: new Set(),
      ...(spread ? { spread } : {}),
    });
  }

  /** Keeps `result` for `parent`'s `--wait`; refused (changing nothing) when too big or not one of its last fork. */
  put(parent: string, child: string, result: unknown): void {
    const bytes = Buffer.byteLength(JSON.stringify(result ?? null));
    if (bytes > SELF_FORK_RESULT_MAX)
      throw new SelfForkRefusal('BAD_REQUEST', `result: ${bytes} bytes of JSON; at most ${SELF_FORK_RESULT_MAX}`);
    const f = this.#forks.get(parent);
    const c = f?.children.find((x) => x.vm === child);
    if (!f || !c)
      throw new SelfForkRefusal('INVALID_STATE', `VM ${parent} no longer waits for this VM's result (it forked again, or is gone)`);
    c.result = result ?? null;
    delete c.ended;
    this.#tell(f);
  }

  /** A VM left this host or failed: as a child its entry is `ended` (unless it gave a result), as a parent its fork is forgotten. */
  ended(vm: string, how: string): void {
    this.#end(vm);
    for (const f of this.#forks.values()) {
      const c = f.children.find((x) => x.vm === vm);
      if (c && c.result === undefined) {
        c.ended = how;
        this.#tell(f);
      }
    }
  }

  /**
   * Resolves once every child of the parent's last self-fork has a result or has ended, with
   * them all in index order; TIMEOUT after `timeoutMs`; INVALID_STATE if it made none (or
   * forked again, or went, meanwhile).
   */
  wait(parent: string, timeoutMs: number): Promise<ChildResult[]> {
    const f = this.#forks.get(parent);
    if (!f) return Promise.reject(new SelfForkRefusal('INVALID_STATE', 'this VM has no self-fork to wait for'));
    if (f.spread)
      return Promise.reject(
        new SelfForkRefusal(
          'INVALID_STATE',
          '--wait after a --spread self-fork is not supported: children on other hosts report to their own hosts, so only a subset could be gathered; fork without --spread to --wait',
        ),
      );
    if (this.#closed) return Promise.reject(new SelfForkRefusal('INVALID_STATE', 'hostd is stopping'));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.#forks.get(parent) !== f) return finish(new SelfForkRefusal('INVALID_STATE', 'the self-fork waited for was replaced'));
        for (const c of f.children) {
          if (c.result !== undefined || c.ended) continue;
          const state = this.stateOf(c.vm);
          if (state === undefined || state === 'destroyed') c.ended = 'destroyed';
          else if (state === 'failed') c.ended = 'failed';
        }
        if (f.children.every((c) => c.result !== undefined || c.ended)) finish();
      };
      const stop = (): void => finish(new SelfForkRefusal('INVALID_STATE', 'hostd is stopping: the wait ended'));
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        f.waiters.delete(check);
        this.#stops.delete(stop);
        if (err) reject(err);
        else resolve(f.children.map((c) => ({ ...c })));
      };
      const timer = setTimeout(() => {
        const left = f.children.filter((c) => c.result === undefined && !c.ended).length;
        finish(
          new SelfForkRefusal('TIMEOUT', `${left} of ${f.children.length} children neither reported nor ended within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      f.waiters.add(check);
      this.#stops.add(stop);
      check();
    });
  }

  /** Every `--wait` ends now (INVALID_STATE), its timer cleared; none starts after. */
  close(): void {
    this.#closed = true;
    for (const stop of [...this.#stops]) stop();
  }

  /** Parents with a fork kept (for tests and bounds). */
  get size(): number {
    return this.#forks.size;
  }

  #end(parent: string): void {
    const f = this.#forks.get(parent);
    if (!f) return;
    this.#forks.delete(parent);
    this.#tell(f);
  }

  #tell(f: LastFork): void {
    for (const w of [...f.waiters]) w();
  }
}
