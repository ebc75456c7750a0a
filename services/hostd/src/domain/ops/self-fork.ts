import { setTimeout as sleep } from 'node:timers/promises';
import { asForkyError, newId } from '@forky/base';
import { SELF_FORK_LINE_MAX, SelfForkRequest, parseOrThrow, type ForkRequest, type ForkResult, type SelfForkReply } from '@forky/contract';
import type { Host } from '../host.js';
import type { EventSink, SelfForkLine } from '../ports.js';
import type { VmRecord } from '../records.js';
import { SelfForkResults } from '../self-fork-results.js';
import {
  SELF_FORK_ENV,
  SelfForkRefusal,
  TokenBucket,
  aliveInTree,
  checkBudget,
  spreadToken,
  type ForkOwn,
  type SelfForkRecord,
} from '../self-fork-tree.js';

/** Requests a VM may send a second (refused ones too), and how many it may save up. */
export const SELF_FORK_RATE = { perSec: 2, burst: 4 };
/** How long a `--wait` without a timeout of its own waits for the children. */
const WAIT_DEFAULT_MS = 10 * 60_000;
/** Bytes of a reply's message (the protocol's bound). */
const MESSAGE_MAX = 1024;

/** What a self-fork does through the engine's facade (so each is one operation, told as a change). */
export interface SelfForkEngine {
  fork(req: ForkRequest, own: ForkOwn): Promise<ForkResult>;
  resume(id: string): Promise<unknown>;
  destroy(id: string): Promise<unknown>;
}

type Fork = Extract<SelfForkRequest, { op: 'fork' }>;

/**
 * The host's end of every VM's self-fork port (issue 22): one request per line, each checked
 * against the VM's policy and rate before anything is touched, one reply line per request (a
 * fork's `parent` reply on the parent's port and a `child` reply on each child's).
 */
export class SelfForks {
  readonly results: SelfForkResults;
  /** VMs with a request being carried out: one at a time each (the guest program holds a lock too). */
  readonly #busy = new Set<string>();
  readonly #buckets = new Map<string, TokenBucket>();
  /** Per tree root: VMs that self-forks in flight will make, counted before they exist. */
  readonly #reserved = new Map<string, number>();

  constructor(
    private readonly host: Host,
    private readonly engine: SelfForkEngine,
    private readonly rate = SELF_FORK_RATE,
  ) {
    this.results = new SelfForkResults((id) => host.vms.get(id)?.state);
  }

  /** A VM was destroyed or failed (from its event). */
  vmEnded(id: string, how: string): void {
    this.results.ended(id, how);
    if (!this.host.vms.has(id)) this.#buckets.delete(id);
  }

  /** One line from process `from.generation` of VM `from.id`; lines of a process that is no longer the VM's are dropped. */
  async line(from: { id: string; generation: number }, l: SelfForkLine): Promise<void> {
    const vm = this.host.vms.get(from.id);
    if (!vm || vm.generation !== from.generation || !vm.handle) return;
    let bucket = this.#buckets.get(vm.id);
    if (!bucket) this.#buckets.set(vm.id, (bucket = new TokenBucket(this.rate.perSec, this.rate.burst)));
    if (!bucket.take()) {
      await this.#reply(vm.id, refusal(new SelfForkRefusal('RATE_LIMITED', `at most ${this.rate.perSec} self-fork requests a second`)));
      // This port's next line waits for the next token: a flood is held at the rate, not answered.
      await sleep(bucket.msUntilToken());
      return;
    }
    if (this.#busy.has(vm.id)) {
      await this.#reply(vm.id, refusal(new SelfForkRefusal('BUSY', 'another self-fork request of this VM is being carried out')));
      return;
    }
    this.#busy.add(vm.id);
    try {
      const req = parseLine(l);
      const reply =
        req.op === 'fork'
          ? await this.#fork(vm, req)
          : req.op === 'wait'
            ? { v: 1 as const, ok: true as const, results: await this.results.wait(vm.id, req.timeoutMs ?? WAIT_DEFAULT_MS) }
            : await this.#result(vm, req.result, req.exit);
      if (reply) await this.#reply(vm.id, reply);
    } catch (e) {
      this.host.log.info({ vm: vm.id, err: e }, 'self-fork request refused');
      await this.#reply(vm.id, refusal(e));
    } finally {
      this.#busy.delete(vm.id);
    }
  }

  async #fork(vm: VmRecord, req: Fork): Promise<SelfForkReply> {
    const sf = vm.selfFork;
    const root = sf?.root ?? vm.id;
    const reserved = this.#reserved.get(root) ?? 0;
    checkBudget(sf, req.count, aliveInTree(this.host.vms.values(), root) + reserved);
    const schedulerFork = this.host.d.schedulerFork;
    if (req.spread && !schedulerFork)
      throw new SelfForkRefusal('BAD_REQUEST', 'spread: this host has no scheduler to place children elsewhere');
    // Counted from here, with no await since the check: a second request sees these children.
    this.#reserved.set(root, reserved + req.count);
    const t0 = performance.now();
    const child: SelfForkRecord = { policy: sf.policy, root, depth: sf.depth + 1, children: 0, parent: vm.id, pending: true };
    const labels = req.labels ? { labels: req.labels } : {};
    let children: string[];
    try {
      const r =
        req.spread && schedulerFork
          ? // Each child's token travels in its env to whichever host makes it; that host replies to it.
            await schedulerFork({
              source: vm.id,
              count: req.count,
              resumeParent: req.live,
              until: 'ready',
              spread: true,
              perChild: Array.from({ length: req.count }, (_, i) => ({
                env: { [SELF_FORK_ENV]: spreadToken(vm.id, i + 1, req.count, child) },
              })),
              ...labels,
              key: newId('sfk', 16),
            })
          : await this.engine.fork(
              { source: vm.id, count: req.count, resumeParent: req.live, until: 'ready', ...labels },
              { selfFork: child, reason: 'self-fork' },
            );
      children = r.children.map((c) => c.id);
      // The children join the tree as the reservation goes: the count never dips or doubles.
      sf.children += children.length;
      for (const id of children) {
        const c = this.host.vms.get(id)?.selfFork;
        if (c && !c.spread) delete c.pending;
      }
    } finally {
      const left = (this.#reserved.get(root) ?? req.count) - req.count;
      if (left > 0) this.#reserved.set(root, left);
      else this.#reserved.delete(root);
    }
    // Results are kept here for the children made here (results across hosts are not collected yet).
    const here = children.flatMap((id, i) => (this.host.vms.has(id) ? [{ vm: id, index: i + 1 }] : []));
    this.results.forked(vm.id, here);
    await this.#persist([vm.id, ...children]);
    // Each child's forky-fork, restored blocked on its port, returns now: its identity is already its own.
    if (!req.spread)
      await Promise.all(
        children.map((id, i) =>
          this.#reply(id, { v: 1, ok: true, role: 'child', index: i + 1, count: children.length, vm: id, parent: vm.id }),
        ),
      );
    if (!req.live) await this.engine.resume(vm.id);
    this.host.log.info({ vm: vm.id, children, live: req.live, spread: req.spread, ms: Math.round(performance.now() - t0) }, 'self-fork');
    return { v: 1, ok: true, role: 'parent', children };
  }

  /** A fork's share was made here (its `forked` event): the children of a spread self-fork among it get their replies. */
  async forkedHere(ids: readonly string[]): Promise<void> {
    const mine = ids.flatMap((id) => {
      const sf = this.host.vms.get(id)?.selfFork;
      if (!sf?.spread || !sf.pending || !sf.parent || !sf.index) return [];
      delete sf.pending;
      return [{ id, parent: sf.parent, index: sf.index, count: sf.spread.count }];
    });
    await Promise.all(
      mine.map((c) => this.#reply(c.id, { v: 1, ok: true, role: 'child', index: c.index, count: c.count, vm: c.id, parent: c.parent })),
    );
    await this.#persist(mine.map((c) => c.id));
  }

  /** A child's result for its parent; with `exit` the child is destroyed once it is kept (no reply then). */
  async #result(vm: VmRecord, result: unknown, exit: boolean): Promise<SelfForkReply | undefined> {
    const parent = vm.selfFork?.parent;
    if (!parent) throw new SelfForkRefusal('INVALID_STATE', 'this VM was not made by a self-fork: it has no parent to report to');
    this.results.put(parent, vm.id, result);
    if (!exit) return { v: 1, ok: true };
    try {
      await this.engine.destroy(vm.id);
      return undefined;
    } catch (e) {
      throw new SelfForkRefusal('INVALID_STATE', `the result is kept, but destroying this VM failed: ${asForkyError(e).message}`, {
        cause: e,
      });
    }
  }

  async #persist(ids: string[]): Promise<void> {
    for (const id of ids) {
      const r = this.host.vms.get(id);
      if (r) await this.host.persist(r).catch((err: unknown) => this.host.log.warn({ err, vm: id }, 'self-fork record not saved'));
    }
  }

  /** Writes a reply on the VM's current process (a fork's parent has a new one by then); one gone is skipped. */
  async #reply(id: string, reply: SelfForkReply): Promise<void> {
    const h = this.host.vms.get(id)?.handle;
    if (!h || !this.host.runtime.selfForkReply) return;
    await this.host.runtime
      .selfForkReply(h, JSON.stringify(reply))
      .catch((err: unknown) => this.host.log.warn({ err, vm: id }, 'self-fork reply not written'));
  }
}

/** A request line, or BAD_REQUEST naming what is wrong with it. */
export function parseLine(l: SelfForkLine): SelfForkRequest {
  if (!('line' in l)) throw new SelfForkRefusal('BAD_REQUEST', `a request is one line of at most ${SELF_FORK_LINE_MAX} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(l.line);
  } catch {
    throw new SelfForkRefusal('BAD_REQUEST', 'a request is one JSON object per line');
  }
  try {
    return parseOrThrow(SelfForkRequest, v, 'self-fork request');
  } catch (e) {
    throw new SelfForkRefusal('BAD_REQUEST', asForkyError(e).message, { cause: e });
  }
}

function refusal(e: unknown): SelfForkReply {
  const { code, message } = e instanceof SelfForkRefusal ? e : asForkyError(e);
  return { v: 1, ok: false, code, message: message.length > MESSAGE_MAX ? `${message.slice(0, MESSAGE_MAX - 1)}…` : message };
}

/** The engine's events, with each VM's end (destroyed, failed) also told to `ended`, and each fork's children to `forked`. */
export function withSelfForkEvents<D extends { events?: EventSink }>(
  d: D,
  ended: (vm: string, how: string) => void,
  forked: (children: readonly string[]) => void,
): D {
  const inner = d.events;
  return {
    ...d,
    events: {
      publish(e) {
        inner?.publish(e);
        // A sink never throws: a waiter's bookkeeping failing must not fail the operation that told it.
        try {
          if (e.vm && (e.kind === 'destroyed' || e.kind === 'failed')) ended(e.vm, e.kind);
          if (e.kind === 'forked' && e.children) forked(e.children);
        } catch {
          /* nothing to undo */
        }
      },
    },
  };
}
