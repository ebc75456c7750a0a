import { SelfForkPolicy, type SelfForkInfo, type VmState } from '@forky/contract';

export type { SelfForkPolicy } from '@forky/contract';

/**
 * A VM's self-fork standing (issue 22), on its record. A VM booted with a policy is the root of
 * a tree; its self-forked children are in that tree, one generation down. A child of an outside
 * fork (or of a snapshot) of such a VM gets the same policy as the root of a tree of its own:
 * whoever forked it from outside chose to, the guest did not.
 */
export interface SelfForkRecord {
  policy: SelfForkPolicy;
  /** The tree's root: maxAlive is counted over every VM with this root. */
  root: string;
  /** Generations below the root. */
  depth: number;
  /** Children this VM has self-forked, over all its calls. */
  children: number;
  /** The VM whose self-fork made this one, and its index in that fork (1..count). */
  parent?: string;
  index?: number;
  /**
   * While the self-fork making it is in flight: the fork's reservation counts it, and it may not
   * fork itself yet (its guest has not even been told it is a child).
   */
  pending?: true;
  /**
   * A child of a spread self-fork: its own host writes its reply (with the parent's request `id`)
   * once its fork's share is made.
   */
  spread?: { count: number; id?: string };
  /**
   * The id of the request this VM's guest is waiting on, saved before it is carried out: a hostd
   * restarted meanwhile, or a copy of the VM made meanwhile, tells that id it is lost (the guest
   * skips a line with another id, so one left over is harmless).
   */
  inFlight?: string;
  /**
   * The id of the non-live self-fork that paused this VM, saved before the pause: a hostd that
   * restarted mid-fork resumes it (and clears this), as the fork itself would have.
   */
  pausedBy?: string;
}

/** What the hostd adds to a fork it makes for a guest; never from the wire. */
export interface ForkOwn {
  /** Every child's standing (its `index` is set per child). */
  selfFork?: SelfForkRecord;
  /** Said on the `forked` event (`self-fork`). */
  reason?: string;
}

/**
 * The env entry (ChildEnv, in the fork's perChild) that makes a child of a spread self-fork part
 * of its parent's tree on whichever host it lands: `parent,index,count,root,depth,maxChildren,
 * maxDepth,maxAlive,id` (id: the parent's request id, echoed in the child's reply). A spread child's
 * depth is past maxDepth: it may not self-fork, since no host sees the whole tree to count it. Set by hostd only (a guest names no env); a client that sets it could boot
 * such a policy anyway.
 */
export const SELF_FORK_ENV = 'FORKY_SELF_FORK';

/** A fork asked by the scheduler for a spread self-fork's share (its children carry tokens): its `forked` event says so. */
export function shareOwn(perChild: ReadonlyArray<{ env?: Readonly<Record<string, string>> }> | undefined): ForkOwn {
  return perChild?.some((c) => c.env && SELF_FORK_ENV in c.env) ? { reason: 'self-fork' } : {};
}

export function spreadToken(parent: string, index: number, count: number, child: SelfForkRecord, id: string): string {
  const p = child.policy;
  return [parent, index, count, child.root, p.maxDepth + 1, p.maxChildren, p.maxDepth, p.maxAlive, id].join(',');
}

const TOKEN = /^(vm-[a-z0-9]{12}),(\d{1,4}),(\d{1,4}),(vm-[a-z0-9]{12}),(\d{1,2}),(\d{1,4}),(\d{1,2}),(\d{1,4}),([0-9a-f]{16})$/;

/** A child's standing: its fork's (a local self-fork), or its env's token (a spread one's share), or none. */
export function childSelfFork(
  own: SelfForkRecord | undefined,
  env: Readonly<Record<string, string>> | undefined,
): SelfForkRecord | undefined {
  if (own) return own;
  const m = TOKEN.exec(env?.[SELF_FORK_ENV] ?? '');
  if (!m) return undefined;
  const [index, count, depth, maxChildren, maxDepth, maxAlive] = [m[2], m[3], m[5], m[6], m[7], m[8]].map(Number) as number[] as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const policy = SelfForkPolicy.safeParse({ maxChildren, maxDepth, maxAlive });
  if (!policy.success || index < 1 || index > count) return undefined;
  return {
    policy: policy.data,
    root: m[4] as string,
    depth,
    children: 0,
    parent: m[1] as string,
    index,
    pending: true,
    spread: { count, id: m[9] as string },
  };
}

export const rootOf = (id: string, policy: SelfForkPolicy): SelfForkRecord => ({ policy, root: id, depth: 0, children: 0 });

/** `vm.show`'s view of it. */
export function selfForkInfo(r: SelfForkRecord): SelfForkInfo {
  return { policy: r.policy, root: r.root, depth: r.depth, children: r.children };
}

/** What a guest is told when its request is not done; `code` is the protocol's, not only ForkyError's. */
export class SelfForkRefusal extends Error {
  override readonly name = 'SelfForkRefusal';
  constructor(
    readonly code: 'FORBIDDEN' | 'CAPACITY' | 'RATE_LIMITED' | 'BUSY' | 'BAD_REQUEST' | 'INVALID_STATE' | 'TIMEOUT',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export const NO_POLICY = 'self-fork is off for this VM: boot it with a selfFork policy';

/** States in which a VM counts against its tree's maxAlive: everything but gone or going. */
const NOT_ALIVE: ReadonlySet<VmState> = new Set<VmState>(['destroying', 'destroyed', 'failed']);

/** VMs of tree `root` alive now, those of self-forks in flight left out (their reservations count them). */
export function aliveInTree(vms: Iterable<{ state: VmState; selfFork?: SelfForkRecord }>, root: string): number {
  let n = 0;
  for (const v of vms) if (v.selfFork?.root === root && !v.selfFork.pending && !NOT_ALIVE.has(v.state)) n++;
  return n;
}

/**
 * Refuses a self-fork of `count` children that the budget does not allow, whole: `alive` is the
 * tree's VMs alive now plus those forks in flight will make. Nothing is changed either way.
 */
export function checkBudget(sf: SelfForkRecord | undefined, count: number, alive: number): asserts sf is SelfForkRecord {
  if (!sf) throw new SelfForkRefusal('FORBIDDEN', NO_POLICY);
  if (sf.pending) throw new SelfForkRefusal('INVALID_STATE', 'this VM is still being made by a self-fork');
  const p = sf.policy;
  if (sf.depth > p.maxDepth)
    throw new SelfForkRefusal(
      'FORBIDDEN',
      `this VM is ${sf.depth} generation${sf.depth === 1 ? '' : 's'} below the root ${sf.root}; its policy lets only ${p.maxDepth === 0 ? 'the root' : `generations 0..${p.maxDepth}`} self-fork (maxDepth ${p.maxDepth})`,
    );
  if (sf.children + count > p.maxChildren)
    throw new SelfForkRefusal(
      'CAPACITY',
      `${count} more children would make ${sf.children + count}; this VM may self-fork ${p.maxChildren} in all (maxChildren) and has made ${sf.children}`,
    );
  if (alive + count > p.maxAlive)
    throw new SelfForkRefusal(
      'CAPACITY',
      `${count} more children would make ${alive + count} VMs alive in the tree of ${sf.root}; at most ${p.maxAlive} (maxAlive), ${alive} now`,
    );
}

/**
 * A token bucket: `ratePerSec` tokens a second, at most `burst` saved up. Every request takes one,
 * refused or not, so a guest that loops on a refusal is held to the rate.
 */
export class TokenBucket {
  #tokens: number;
  #at: number;

  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.#tokens = burst;
    this.#at = now();
  }

  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until a token is there (0: one is). */
  msUntilToken(): number {
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.ratePerSec);
  }

  #refill(): void {
    const t = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((t - this.#at) * this.ratePerSec) / 1000);
    this.#at = t;
  }
}
