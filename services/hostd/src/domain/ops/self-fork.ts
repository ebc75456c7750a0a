import { setTimeout as sleep } from 'node:timers/promises';
import { asForkyError, newId } from '@forky/base';
import type { ForkRequest, ForkResult, SelfForkReply, SelfForkRequest } from '@forky/contract';
import type { Host } from '../host.js';
import type { SelfForkLine } from '../ports.js';
import { NO_ID, dropForkFile, lineId, lostReply, outsideCopy, parsedOrRefusal, refusal } from '../self-fork-lines.js';
import type { VmRecord } from '../records.js';
import { SelfForkRates } from '../self-fork-rate.js';
import { SelfForkResults } from '../self-fork-results.js';
import { SelfForkRefusal, aliveInTree, checkBudget, spreadToken, type ForkOwn, type SelfForkRecord } from '../self-fork-tree.js';

export { SELF_FORK_RATE } from '../self-fork-rate.js';
/** How long a `--wait` without a timeout of its own waits for the children. */
const WAIT_DEFAULT_MS = 10 * 60_000;

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
  /** Forks per tree (a tree of 1000 VMs shares one rate, not 1000); results and waits per VM. */
  readonly rates: SelfForkRates;
  /** Set by close(): nothing more is written (the next hostd tells a request in flight it is lost). */
  #closed = false;
  /** Per tree root: VMs that self-forks in flight will make, counted before they exist. */
  readonly #reserved = new Map<string, number>();
  /**
   * Per tree root: spread children this host asked for, elsewhere or not yet seen here. No host sees
   * the whole tree, so they count here until their parent ends (an over-count, never an under-count).
   */
  readonly #spread = new Map<string, Map<string, string>>();

  constructor(
    private readonly host: Host,
    private readonly engine: SelfForkEngine,
    rate?: { perSec: number; burst: number },
  ) {
    this.results = new SelfForkResults((id) => host.vms.get(id)?.state);
    this.rates = new SelfForkRates(rate);
  }

  /** A VM was destroyed or failed (from its event). */
  vmEnded(id: string, how: string): void {
    this.results.ended(id, how);
    this.rates.ended(id, this.host.vms.values());
    for (const [root, kids] of this.#spread) {
      for (const [child, parent] of kids) if (child === id || parent === id) kids.delete(child);
      if (kids.size === 0) this.#spread.delete(root);
    }
  }

  /** One line from process `from.generation` of VM `from.id`; lines of a process that is no longer the VM's are dropped. */
  async line(from: { id: string; generation: number }, l: SelfForkLine): Promise<void> {
    const vm = this.host.vms.get(from.id);
    if (!vm || vm.generation !== from.generation || !vm.handle) return;
    // Every reply to this line carries its id (one it cannot be read from gets NO_ID: no caller's).
    const id = lineId(l);
    // Parsed first to find its bucket (a line is bounded); a bad one is refused below, after BUSY.
    const parsed = parsedOrRefusal(l);
    const { bucket, why } = this.rates.bucketFor(vm, parsed instanceof SelfForkRefusal ? undefined : parsed.op);
    if (!bucket.take()) {
      await this.#reply(vm.id, refusal(id, new SelfForkRefusal('RATE_LIMITED', why)));
      // This port's next line waits for the next token: a flood is held at the rate, not answered.
      await sleep(bucket.msUntilToken());
      return;
    }
    if (this.#busy.has(vm.id)) {
      await this.#reply(vm.id, refusal(id, new SelfForkRefusal('BUSY', 'another self-fork request of this VM is being carried out')));
      return;
    }
    this.#busy.add(vm.id);
    try {
      if (parsed instanceof SelfForkRefusal) throw parsed;
      const req = parsed;
      // Saved first: a restart or an outside copy of this VM meanwhile tells this id it is lost.
      if (vm.selfFork) {
        vm.selfFork.inFlight = req.id;
        await this.#persist([vm.id]);
      }
      const reply =
        req.op === 'fork'
          ? await this.#fork(vm, req)
          : req.op === 'wait'
            ? { v: 1 as const, id, ok: true as const, results: await this.results.wait(vm.id, req.timeoutMs ?? WAIT_DEFAULT_MS) }
            : await this.#result(vm, req);
      if (reply) await this.#reply(vm.id, reply);
    } catch (e) {
      this.host.log.info({ vm: vm.id, err: e }, 'self-fork request refused');
      await this.#reply(vm.id, refusal(id, e));
    } finally {
      this.#busy.delete(vm.id);
      if (vm.selfFork?.inFlight === id) delete vm.selfFork.inFlight;
    }
  }

  async #fork(vm: VmRecord, req: Fork): Promise<SelfForkReply> {
    const sf = vm.selfFork;
    const root = sf?.root ?? vm.id;
    await this.#pruneSpread(root);
    const reserved = this.#reserved.get(root) ?? 0;
    const spreadKids = [...(this.#spread.get(root)?.keys() ?? [])].filter((c) => this.host.vms.get(c)?.selfFork?.pending ?? true).length;
    checkBudget(sf, req.count, aliveInTree(this.host.vms.values(), root) + reserved + spreadKids);
    const schedulerFork = this.host.d.schedulerFork;
    if (req.spread && !schedulerFork)
      throw new SelfForkRefusal('BAD_REQUEST', 'spread: this host has no scheduler to place children elsewhere');
    // Counted from here, with no await since the check: a second request sees these children.
    this.#reserved.set(root, reserved + req.count);
    // Raised (and saved, below) before any child exists: a restart mid-fork cannot pass maxChildren.
    sf.children += req.count;
    // Only a fork that pauses its parent resumes it (one paused from outside stays so).
    const pauses = !req.live && vm.state === 'running';
    // Saved with the record before the pause: a hostd restarted mid-fork resumes it (recovered()).
    if (pauses) sf.pausedBy = req.id;
    const t0 = performance.now();
    const child: SelfForkRecord = { policy: sf.policy, root, depth: sf.depth + 1, children: 0, parent: vm.id, pending: true };
    const labels = req.labels ? { labels: req.labels } : {};
    let children: string[];
    try {
      await this.host.persist(vm);
      const r =
        req.spread && schedulerFork
          ? // Each child's token travels in its env to whichever host makes it; that host replies to it.
            await schedulerFork({
              source: vm.id,
              count: req.count,
              live: req.live,
              tokens: Array.from({ length: req.count }, (_, i) => spreadToken(vm.id, i + 1, req.count, child, req.id)),
              ...labels,
              key: newId('sfk', 16),
            })
          : await this.engine.fork(
              { source: vm.id, count: req.count, resumeParent: req.live, until: 'ready', ...labels },
              { selfFork: child, reason: 'self-fork' },
            );
      children = r.children.map((c) => c.id);
      if (req.spread) {
        const kids = this.#spread.get(root) ?? new Map<string, string>();
        for (const c of children) kids.set(c, vm.id);
        this.#spread.set(root, kids);
      }
      // The children join the tree as the reservation goes: the count never dips or doubles.
      sf.children += children.length - req.count;
      for (const id of children) {
        const c = this.host.vms.get(id)?.selfFork;
        if (c && !c.spread) delete c.pending;
      }
    } catch (e) {
      // None made (a fork is all or nothing): not counted, and the parent runs again before it is told.
      sf.children -= req.count;
      await this.#persist([vm.id]);
      if (pauses) await this.#resumeParent(vm.id);
      throw e;
    } finally {
      const left = (this.#reserved.get(root) ?? req.count) - req.count;
      if (left > 0) this.#reserved.set(root, left);
      else this.#reserved.delete(root);
    }
    // Results are kept here for the children made here; a spread fork's `--wait` is refused
    // (results are not gathered across hosts: it would return a subset).
    const here = children.flatMap((id, i) => (this.host.vms.has(id) ? [{ vm: id, index: i + 1 }] : []));
    this.results.forked(vm.id, here, req.spread);
    await this.#persist([vm.id, ...children]);
    // Each child's forky-fork, restored blocked on its port, returns now: its identity is already its own.
    if (!req.spread)
      await Promise.all(
        children.map((id, i) =>
          this.#reply(id, { v: 1, id: req.id, ok: true, role: 'child', index: i + 1, count: children.length, vm: id, parent: vm.id }),
        ),
      );
    if (pauses) await this.#resumeParent(vm.id);
    this.host.log.info({ vm: vm.id, children, live: req.live, spread: req.spread, ms: Math.round(performance.now() - t0) }, 'self-fork');
    return { v: 1, id: req.id, ok: true, role: 'parent', children };
  }

  /** Resumes a parent its self-fork paused, if it still is paused; never fails the request (its outcome stands either way). */
  async #resumeParent(id: string): Promise<void> {
    const vm = this.host.vms.get(id);
    if (vm?.state === 'paused')
      await this.engine.resume(id).catch((err: unknown) => this.host.log.warn({ err, vm: id }, 'self-fork: parent not resumed'));
    if (vm?.selfFork?.pausedBy === undefined) return;
    delete vm.selfFork.pausedBy;
    await this.#persist([id]);
  }

  /** Stops for good (hostd closes): every `--wait` ends and its timer goes; nothing more is written. */
  close(): void {
    this.#closed = true;
    this.results.close();
  }

  /**
   * After recovery: a request the earlier hostd was carrying out is lost, and its caller is told so
   * by its id (a VM with none in flight gets nothing).
   */
  async recovered(): Promise<void> {
    // A parent its self-fork paused, left so by the earlier hostd: running again, unmarked.
    for (const v of [...this.host.vms.values()].filter((x) => x.selfFork?.pausedBy !== undefined)) await this.#resumeParent(v.id);
    const lost = [...this.host.vms.values()].flatMap((v) => (v.selfFork?.inFlight ? [[v.id, v.selfFork.inFlight] as const] : []));
    await Promise.all(lost.map(([vm, id]) => this.#reply(vm, lostReply(id, 'hostd restarted'))));
  }

  /** Spread children the cluster's locator no longer has are gone: they stop counting (a failed look keeps them). */
  async #pruneSpread(root: string): Promise<void> {
    const kids = this.#spread.get(root);
    const has = this.host.d.directory?.hasVm?.bind(this.host.d.directory);
    if (!kids || !has) return;
    for (const id of [...kids.keys()]) if (!this.host.vms.has(id) && !(await has(id).catch(() => true))) kids.delete(id);
  }

  /**
   * A fork's share was made here (its `forked` event): the children of a spread self-fork among it
   * get their replies; the copies an outside fork made of a VM whose guest was waiting on a
   * request are told it is lost (they are not its children: no reply would ever come).
   */
  async forkedHere(ids: readonly string[], source?: string): Promise<void> {
    // A copy made from outside is no self-fork child: a /run/forky/fork its source had names another VM.
    if (!this.#closed) await Promise.all(ids.filter((id) => outsideCopy(this.host, id)).map((id) => dropForkFile(this.host, id)));
    const waiting = source ? this.host.vms.get(source)?.selfFork?.inFlight : undefined;
    if (waiting)
      await Promise.all(
        ids
          .filter((id) => !this.host.vms.get(id)?.selfFork?.parent)
          .map((id) => this.#reply(id, lostReply(waiting, 'this VM is a copy made while the request was carried out'))),
      );
    const mine = ids.flatMap((id) => {
      const sf = this.host.vms.get(id)?.selfFork;
      if (!sf?.spread || !sf.pending || !sf.parent || !sf.index) return [];
      delete sf.pending;
      return [{ id, parent: sf.parent, index: sf.index, count: sf.spread.count, req: sf.spread.id ?? NO_ID }];
    });
    await Promise.all(
      mine.map((c) =>
        this.#reply(c.id, { v: 1, id: c.req, ok: true, role: 'child', index: c.index, count: c.count, vm: c.id, parent: c.parent }),
      ),
    );
    await this.#persist(mine.map((c) => c.id));
  }

  /**
   * A child's result for its parent; with `exit` the child is destroyed whether or not the result is
   * kept (one left behind would count against maxAlive until its TTL), and gets no reply then.
   */
  async #result(vm: VmRecord, { id, result, exit }: Extract<SelfForkRequest, { op: 'result' }>): Promise<SelfForkReply | undefined> {
    const parent = vm.selfFork?.parent;
    // Not a self-fork's child: refused, and never destroyed (its guest did not make it).
    if (!parent) throw new SelfForkRefusal('INVALID_STATE', 'this VM was not made by a self-fork: it has no parent to report to');
    let notKept: unknown;
    try {
      this.results.put(parent, vm.id, result);
    } catch (e) {
      if (!exit) throw e;
      notKept = e;
      this.host.log.info({ vm: vm.id, err: e }, 'self-fork result not kept; destroying the VM as it asked');
    }
    if (!exit) return { v: 1, id, ok: true };
    try {
      await this.engine.destroy(vm.id);
      return undefined;
    } catch (e) {
      const kept = notKept ? `the result is not kept (${asForkyError(notKept).message})` : 'the result is kept';
      throw new SelfForkRefusal('INVALID_STATE', `${kept}, but destroying this VM failed: ${asForkyError(e).message}`, { cause: e });
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
    if (!h || !this.host.runtime.selfForkReply || this.#closed) return;
    await this.host.runtime
      .selfForkReply(h, JSON.stringify(reply))
      .catch((err: unknown) => this.host.log.warn({ err, vm: id }, 'self-fork reply not written'));
  }
}
