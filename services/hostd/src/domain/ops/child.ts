import { ForkyError, ValidationError, newId, type Semaphore } from '@forky/base';
import {
  DEVICE_SET,
  MAX_LABELS,
  excerpt,
  type AppMount,
  type ChildEnv,
  type Egress,
  type ForkRequest,
  type IdleRule,
  type Labels,
  type VmInfo,
} from '@forky/contract';
import type { Image } from '../../images.js';
import { round, type Host } from '../host.js';
import { giveIdentity, identityOf } from '../identity.js';
import { setLifetime } from '../lifetimes.js';
import type { VmHandle, VmRuntime } from '../ports.js';
import { egressOf, type SnapshotRecord } from '../records.js';
import { childSelfFork, type SelfForkRecord } from '../self-fork-tree.js';
import { withRollback } from '../rollback.js';
import { loadWarm } from '../warm-pool.js';
import { destroyVm } from './lifecycle.js';
import { makeVm } from './make.js';

export interface ChildOptions {
  /** When the fork started, for the child's timings. */
  started: number;
  until: 'ready' | 'running';
  requestKey?: string;
  apps?: AppMount[];
  /** The fork's labels with this child's own on top; the snapshot's come under both. */
  labels?: Labels;
  /** Written in the guest as /run/forky/env once its identity is set. */
  env?: ChildEnv;
  /** Its egress instead of the snapshot's: filtered so before its vCPUs run. */
  egress?: Egress;
  /** Its TTL (from its own start) and idle rule instead of the snapshot's (those of the VM it was taken of). */
  ttlMs?: number;
  idle?: IdleRule;
  /** A template boot's template name. */
  template?: string;
  /** Its self-fork standing, for a child of a self-fork (its parent's tree, one generation down). */
  selfFork?: SelfForkRecord;
  /**
   * Bounds the children starting their process and loading the snapshot at once (the CPU-heavy
   * part); waiting for the agent and the identity step are not bounded by it.
   */
  starts?: Semaphore;
  /** The fork's children loaded (each says so once: loaded, or failed before); its settle waits for all. */
  loads?: Arrivals;
  /**
   * Its agent and identity deadlines are this many times the configured ones: a fork's children
   * settle all at once, and 100 TCG guests on 2 cores took more than 10 s each to answer (the
   * raw floor's 100 answer within 29 s of their start; 21 of 100 missed the 10 s identity step).
   */
  settleScale?: number;
  /**
   * The fork's: aborted by the first child that fails (a fork is all or nothing), so that the
   * ones not yet started are not. A start that fails aborts it before its slot passes on.
   */
  failFast?: AbortController;
}

/** A child of a fork not started because a sibling had failed already. */
export class ChildNotStarted extends ForkyError {
  override readonly name = 'ChildNotStarted';
  constructor() {
    super('INTERNAL', 'not started: a sibling had failed');
  }
}

/**
 * Resolves `all` once each of `n` children has arrived. A child's agent and identity deadlines
 * count from there: 100 TCG guests on 2 cores answered their identity step in more than its 10 s
 * while siblings were still loading (27 of 100 failed), and one such miss fails the whole fork.
 */
export class Arrivals {
  readonly all: Promise<void>;
  #left: number;
  #done!: () => void;

  constructor(n: number) {
    this.#left = n;
    this.all = new Promise<void>((resolve) => (this.#done = resolve));
    if (n <= 0) this.#done();
  }

  /** One child has loaded (or ended without): called once per child, by `once`. */
  once(): () => void {
    let arrived = false;
    return () => {
      if (arrived) return;
      arrived = true;
      if (--this.#left === 0) this.#done();
    };
  }
}

/** Child `i`'s share of a fork request: the fork's labels with its `perChild` ones on top, and its env. */
export function childShare(req: ForkRequest, i: number): Pick<ChildOptions, 'labels' | 'env'> {
  const own = req.perChild?.[i];
  const labels = { ...req.labels, ...own?.labels };
  return {
    ...(Object.keys(labels).length > 0 ? { labels } : {}),
    ...(own?.env && Object.keys(own.env).length > 0 ? { env: own.env } : {}),
  };
}

/** Refuses, before the source is touched, a fork whose children would carry more than MAX_LABELS labels. */
export function checkForkLabels(host: Host, req: ForkRequest): void {
  if (!req.labels && !req.perChild) return;
  const inherited = (req.source.startsWith('vm-') ? host.vm(req.source).labels : host.snap(req.source).info.labels) ?? {};
  for (let i = 0; i < req.count; i++) {
    const n = Object.keys({ ...inherited, ...childShare(req, i).labels }).length;
    if (n > MAX_LABELS)
      throw new ValidationError(`child ${i} would carry ${n} labels, inherited ones included; at most ${MAX_LABELS}`, {
        field: req.perChild?.[i]?.labels ? `perChild.${i}.labels` : 'labels',
      });
  }
}

/** Writes a child's env as /run/forky/env (root's only, replaced whole) through its guest agent: one exec, no image change. */
async function writeEnv(runtime: VmRuntime, h: VmHandle, id: string, env: ChildEnv, timeoutMs: number): Promise<void> {
  // Values are checked printable (no line breaks), so each entry is one KEY=VALUE line, unquoted.
  const text = Object.entries(env)
    .map(([k, v]) => `${k}=${v}\n`)
    .join('');
  const script = 'umask 077 && mkdir -p /run/forky && cat > /run/forky/env.tmp && mv -f /run/forky/env.tmp /run/forky/env';
  const r = await runtime.exec(h, ['/bin/sh', '-c', script], { input: text, timeoutMs });
  if (r.exitCode !== 0)
    throw new ForkyError('INTERNAL', `writing /run/forky/env in VM ${id} failed (exit ${r.exitCode}): ${excerpt(r.stderr, 200)}`);
}

/**
 * One child of a fork: a process (from the warm pool, or started now) loads the snapshot's state,
 * its agent answers and it gets its own identity (and the fork's apps). At `running` it is
 * returned before that settles; one that fails to settle then is destroyed.
 */
export async function restoreChild(host: Host, snap: SnapshotRecord, image: Image, o: ChildOptions): Promise<VmInfo> {
  const { d } = host;
  const files = d.snapshots.files(snap.info.id);
  const warm = host.pool.take(snap.info.id);
  const id = warm?.id ?? newId('vm');
  const rec = host.childRecord(id, snap, image);
  // Its process is started here (or was, warm), loading a snapshot checked to have this device set.
  rec.devices = DEVICE_SET;
  if (o.requestKey) rec.requestKey = o.requestKey;
  const labels = { ...snap.info.labels, ...o.labels };
  if (Object.keys(labels).length > 0) rec.labels = labels;
  if (o.egress) rec.egress = o.egress;
  setLifetime(rec, { ttlMs: o.ttlMs ?? snap.info.ttlMs, idle: o.idle ?? snap.info.idle });
  if (o.template) rec.template = o.template;
  const selfFork = childSelfFork(o.selfFork, o.env);
  if (selfFork) rec.selfFork = selfFork;
  if (warm) {
    rec.mac = warm.mac;
    rec.chain.push(warm.top);
    rec.timings.warm = 1;
  }
  const arrive = o.loads?.once() ?? ((): void => undefined);
  const scale = Math.max(1, o.settleScale ?? 1);
  // A settle failing before the child is made waits for that: its destroy must not race the make.
  let made!: () => void;
  const madeDone = new Promise<void>((resolve) => (made = resolve));
  const info = await withRollback(host.log, { vm: id }, (rb) => {
    if (warm) rb.push('remove the warm layer', () => d.layers.remove(warm.top));
    return makeVm(
      host,
      rb,
      rec,
      image,
      snap.chain.at(-1) as string,
      async (spec, rb) => {
        // Here, once the child is counted (no await between its admission and that): a warm
        // process was started in its filter's scope already, and applying again keeps it so.
        await host.filterNetwork(rb, id, egressOf(rec));
        let h: VmHandle | undefined = warm?.handle;
        // Reads `h` when undone: a warm process that died is replaced by a fresh one.
        rb.push('stop the process', () => (h ? d.runtime.destroy(h) : undefined));
        const load = async (): Promise<void> => {
          if (o.failFast?.signal.aborted) throw new ChildNotStarted();
          if (!warm) {
            h = await d.runtime.prepare(spec, { autostart: true, timeoutMs: d.limits.restoreTimeoutMs });
            await d.runtime.load(h, files.state, d.limits.restoreTimeoutMs);
            return;
          }
          const loaded = await loadWarm(d.runtime, warm.handle, spec, files.state, d.limits.restoreTimeoutMs, host.log);
          h = loaded.handle;
          if (loaded.replaced) delete rec.timings.warm;
        };
        const failing = async (): Promise<void> => {
          try {
            await load();
          } catch (e) {
            if (!(e instanceof ChildNotStarted)) o.failFast?.abort();
            throw e;
          }
        };
        await (o.starts ? o.starts.run(failing) : failing()).finally(arrive);
        rec.timings.runningMs = round(performance.now() - o.started);
        // Before anyone reaches the child through hostd: its agent answers, and it is no longer its siblings' twin.
        const handle = h as VmHandle;
        // Its deadlines count once every sibling is loaded (Arrivals); it runs meanwhile.
        const settle = Promise.resolve(o.loads?.all)
          .then(() =>
            Promise.all([
              d.runtime.waitAgent(handle, d.limits.restoreTimeoutMs * scale),
              giveIdentity(d.runtime, handle, identityOf(rec, d.runtime), d.limits.agentTimeoutMs * scale),
            ]),
          )
          .then(() => (o.env ? writeEnv(d.runtime, handle, id, o.env, d.limits.agentTimeoutMs * scale) : undefined))
          // Apps asked for the children come after identity: each child mounts them as itself.
          .then(() => (o.apps?.length ? host.apps.apply(rec, handle, o.apps, () => host.persist(rec)) : undefined))
          .then(() => {
            rec.timings.settledMs = round(performance.now() - o.started);
          });
        if (o.until === 'ready') {
          await settle;
          return handle;
        }
        rec.settling = settle.catch(async (err: unknown) => {
          await madeDone;
          // Returned already: the child cannot be half-made, so it goes.
          host.log.error({ err, vm: id }, 'child failed to settle after a fork that returned at running; destroying it');
          await destroyVm(host, id).catch(() => undefined);
          await host.changed();
          throw err;
        });
        rec.settling.catch(() => undefined);
        return handle;
      },
      !!warm,
    );
  }).finally(() => {
    arrive();
    made();
  });
  rec.timings.readyMs = round(performance.now() - o.started);
  return { ...info, timings: rec.timings };
}
