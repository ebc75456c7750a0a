import type { VmState } from '@forky/contract';
import { TokenBucket, type SelfForkRecord } from './self-fork-tree.js';

/** Forks (and lines that are no request) a tree, its root and every VM it self-forked, may send a second (refused ones too), and may save up. */
export const SELF_FORK_RATE = { perSec: 10, burst: 20 };
/**
 * `result` and `wait` requests one VM may send a second: per VM, not per tree, so that a wide
 * fork's children, all reporting at once when a step ends, are not refused for being many.
 */
export const SELF_FORK_VM_RATE = { perSec: 2, burst: 4 };

type Rate = { perSec: number; burst: number };
/** A VM as the buckets see it. */
type Vm = { id: string; state: VmState; selfFork?: SelfForkRecord };

/**
 * The token buckets of self-fork requests on this host: one per tree for forks, one per VM for
 * results and waits. A tree's goes once no VM of it is here (its root may end first, or live on
 * another host), a VM's with the VM.
 */
export class SelfForkRates {
  readonly #trees = new Map<string, TokenBucket>();
  readonly #vms = new Map<string, TokenBucket>();

  constructor(
    private readonly tree: Rate = SELF_FORK_RATE,
    private readonly vm: Rate = SELF_FORK_VM_RATE,
  ) {}

  /**
   * The bucket a request of `vm` spends: its own for a `result` or `wait`, its tree's for anything
   * else (a fork, or a line that is no request: a flood of those is held at the tree's rate).
   */
  bucketFor(vm: Vm, op: string | undefined): { bucket: TokenBucket; why: string } {
    if (op === 'result' || op === 'wait') {
      const bucket = got(this.#vms, vm.id, this.vm);
      return { bucket, why: `at most ${this.vm.perSec} self-fork result and wait requests a second from this VM` };
    }
    const tree = vm.selfFork?.root ?? vm.id;
    const bucket = got(this.#trees, tree, this.tree);
    return { bucket, why: `at most ${this.tree.perSec} self-fork requests a second in the tree of ${tree}` };
  }

  /**
   * VM `id` ended: its bucket goes, and every tree's with no VM left here (`vms`: this host's
   * records; a tree's bucket stays while any VM of it is here, so that a child re-made cannot reset the rate).
   */
  ended(id: string, vms: Iterable<Vm>): void {
    this.#vms.delete(id);
    const left = new Set<string>();
    for (const v of vms) if (v.id !== id && v.state !== 'destroyed' && v.state !== 'failed') left.add(v.selfFork?.root ?? v.id);
    for (const tree of [...this.#trees.keys()]) if (!left.has(tree)) this.#trees.delete(tree);
  }

  /** Buckets held (for tests and bounds). */
  get size(): { trees: number; vms: number } {
    return { trees: this.#trees.size, vms: this.#vms.size };
  }
}

function got(m: Map<string, TokenBucket>, key: string, r: Rate): TokenBucket {
  let b = m.get(key);
  if (!b) m.set(key, (b = new TokenBucket(r.perSec, r.burst)));
  return b;
}
