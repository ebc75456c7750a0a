import { z } from 'zod';
import { Labels, VmId } from './ids.js';

/**
 * Self-fork (issue 22): a guest forks itself with `forky-fork`, the way a process calls fork().
 * Off unless the VM was started with a policy. The guest talks to its host over the virtio-serial
 * port `org.forky.fork.0` (/dev/virtio-ports/org.forky.fork.0): one JSON object per line each way.
 * A request line is at most SELF_FORK_LINE_MAX bytes (a longer one is refused and dropped up to its
 * newline); a reply is one line too, and a `results` reply may be longer (every child's result).
 * Every request carries a fresh 16-hex `id`, echoed in every reply to it (a fork's `child` replies
 * carry the parent's request id): a reader skips any line with another id (an earlier caller's
 * reply, a restored copy's, a restarted host's "lost"). One request at a time per VM: the port
 * opens once only, so `forky-fork` queues callers on a lock file; a line that comes while another
 * request of the VM is carried out gets `BUSY` at once (nothing done). Lines are dealt with in
 * order, at most 8 of what arrived at once; past them the rest is dropped and its first whole line
 * gets `BUSY`. Every request counts against a rate per self-fork tree (the root and all it
 * self-forked share 10 a second, 20 saved up; `RATE_LIMITED`), refused ones too. `--wait` after a
 * `--spread` fork is refused (INVALID_STATE): children elsewhere report to their own hosts. A refusal's
 * `code`: FORBIDDEN (no policy, too deep), CAPACITY (maxChildren, maxAlive), RATE_LIMITED, BUSY,
 * BAD_REQUEST, INVALID_STATE, TIMEOUT, or the fork's own error code. The schemas below are the
 * protocol, for programs in any language.
 */
export const SELF_FORK_LINE_MAX = 4096;
/** What a child may report with `forky-fork --result`: any JSON value, encoded at most this long. */
export const SELF_FORK_RESULT_MAX = 3072;

/**
 * The budget a VM and everything it self-forks share. `maxChildren`: children one VM may make by
 * self-forking, over all its calls; `maxDepth`: generations below the VM started with the policy
 * that may still self-fork (0: its children may not); `maxAlive`: VMs of the whole self-fork tree
 * alive at once, the root included. Children inherit it, depth counted down.
 */
export const SelfForkPolicy = z.strictObject({
  maxChildren: z.number().int().min(1).max(1000),
  maxDepth: z.number().int().min(0).max(16),
  maxAlive: z.number().int().min(2).max(1000),
});
export type SelfForkPolicy = z.infer<typeof SelfForkPolicy>;

/** What `vm.show` says of a VM's self-fork standing. */
export const SelfForkInfo = z.strictObject({
  policy: SelfForkPolicy,
  /** The VM that was started with the policy: the tree's budget is counted there. */
  root: VmId,
  /** Generations below the root (0: the root). */
  depth: z.number().int().min(0),
  /** Children this VM has self-forked so far. */
  children: z.number().int().min(0),
});
export type SelfForkInfo = z.infer<typeof SelfForkInfo>;

/** A request's id: 16 lowercase hex digits, fresh per request. */
export const SelfForkId = z.string().regex(/^[0-9a-f]{16}$/, 'a request id is 16 lowercase hex digits');

/** guest → host. */
export const SelfForkRequest = z.discriminatedUnion('op', [
  z.strictObject({
    v: z.literal(1),
    id: SelfForkId,
    op: z.literal('fork'),
    count: z.number().int().min(1).max(1000),
    /** The parent runs on while its children are made (a live fork); default: it waits paused. */
    live: z.boolean().default(false),
    /** Children on other hosts too, like an outside `--spread` fork. */
    spread: z.boolean().default(false),
    labels: Labels.optional(),
  }),
  /** A child's result for its parent's `--wait`; `exit`: destroy this child once it is delivered. */
  z.strictObject({ v: z.literal(1), id: SelfForkId, op: z.literal('result'), result: z.unknown(), exit: z.boolean().default(false) }),
  /** The parent: block until every child of its last fork has a result or is gone. */
  z.strictObject({ v: z.literal(1), id: SelfForkId, op: z.literal('wait'), timeoutMs: z.number().int().min(1).max(3_600_000).optional() }),
]);
export type SelfForkRequest = z.infer<typeof SelfForkRequest>;

export const SelfForkChildResult = z.strictObject({
  vm: VmId,
  index: z.number().int().min(1),
  /** The child's `--result`, when it gave one. */
  result: z.unknown().optional(),
  /** Its state when it ended without a result (destroyed, failed). */
  ended: z.string().optional(),
});

/**
 * host → scheduler, on `subjects.selfFork(host)`: a guest's spread self-fork. The scheduler checks
 * the source is on that host, that each token is the source's child's, and forks with spread on,
 * nothing else (no host, apps, TTL, idle rule or env but the tokens). Across hosts only this holds:
 * spread children may not self-fork, and their parent's host counts them against its tree.
 */
export const SelfForkSchedRequest = z.strictObject({
  source: VmId,
  count: z.number().int().min(1).max(1000),
  live: z.boolean(),
  labels: Labels.optional(),
  /** Each child's FORKY_SELF_FORK token, in index order (count of them). */
  tokens: z.array(z.string().min(1).max(160)).min(1).max(1000),
  key: z.string().min(1).max(64),
});
export type SelfForkSchedRequest = z.infer<typeof SelfForkSchedRequest>;

/** host → guest. The same fork call gets `parent` in the parent and `child` in each child. */
export const SelfForkReply = z.union([
  z.strictObject({ v: z.literal(1), id: SelfForkId, ok: z.literal(true), role: z.literal('parent'), children: z.array(VmId) }),
  z.strictObject({
    v: z.literal(1),
    id: SelfForkId,
    ok: z.literal(true),
    role: z.literal('child'),
    index: z.number().int().min(1),
    count: z.number().int().min(1),
    vm: VmId,
    parent: VmId,
  }),
  z.strictObject({ v: z.literal(1), id: SelfForkId, ok: z.literal(true), results: z.array(SelfForkChildResult) }),
  z.strictObject({ v: z.literal(1), id: SelfForkId, ok: z.literal(true) }),
  z.strictObject({ v: z.literal(1), id: SelfForkId, ok: z.literal(false), code: z.string(), message: z.string().max(1024) }),
]);
export type SelfForkReply = z.infer<typeof SelfForkReply>;
