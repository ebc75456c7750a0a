import { randomBytes } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { z } from 'zod';
import { asForkyError } from '@forky/base';
import type { SchedContext } from './context.js';
import { subKey } from './fork.js';
import { TRANSIENT } from './jobs.js';
import { buildKeys, dropBootHost, dropBuild, getTemplate, readBuild, saveBuild, type Attempt, type Build } from './template-store.js';

/**
 * The key of hostd call `step` of attempt `a` of the create under `key`. The nonce is the build
 * record's: a request sent again under its key after it failed gets a new record, so it never
 * meets the outcomes hostd remembers of the first one's calls.
 */
export const attemptKey = (key: string, a: Pick<Attempt, 'gen' | 'nonce'>, step: string): string =>
  subKey(key, a.nonce ? `${a.nonce}/g${a.gen}/${step}` : `g${a.gen}/${step}`);

export const newNonce = (): string => randomBytes(6).toString('hex');

/** The current attempt of a build record. */
export function attemptOf(b: Build): Attempt {
  const { host, gen, nonce, vm, snapshot, steps, pending } = b;
  return {
    host,
    gen,
    ...(nonce ? { nonce } : {}),
    ...(vm ? { vm } : {}),
    ...(snapshot ? { snapshot } : {}),
    ...(steps ? { steps } : {}),
    ...(pending ? { pending } : {}),
  };
}

const madeSomething = (a: Attempt): boolean => !!(a.vm || a.snapshot || a.pending?.length);
const alive = (ctx: SchedContext, host: string): boolean => ctx.hosts.statuses().some((h) => h.id === host && h.alive);

/** A fresh attempt on `host`, one generation on; the current one is kept to be cleaned up if it made anything. */
export function nextAttempt(b: Build, host: string, keepCurrent: boolean): Build {
  const left = [...(b.left ?? []), ...(keepCurrent && madeSomething(attemptOf(b)) ? [attemptOf(b)] : [])];
  return { name: b.name, boot: b.boot, host, gen: b.gen + 1, ...(b.nonce ? { nonce: b.nonce } : {}), ...(left.length ? { left } : {}) };
}

/**
 * Takes back what attempt `a` made: repeats its calls whose outcome is unknown under their keys
 * (hostd returns what the first made, joins it, or makes it now), destroys the builder, and deletes
 * the snapshot unless the template names it (a create whose filing reply was lost). False when its
 * host is down or a call failed: the attempt is kept for a later sweep.
 */
export async function undoAttempt(ctx: SchedContext, key: string, b: Build, a: Attempt): Promise<boolean> {
  if (!madeSomething(a)) return true;
  if (!alive(ctx, a.host)) return false;
  const c = ctx.hosts.client(a.host);
  // A repeat refused for good made nothing (hostd rolled it back); a host not answering may have.
  const nothing = (e: unknown): undefined => {
    if (TRANSIENT.has(asForkyError(e).code)) throw e;
    return undefined;
  };
  const gone = (e: unknown): void => {
    if (asForkyError(e).code !== 'NOT_FOUND') throw e;
  };
  try {
    let vm = a.vm;
    let snap = a.snapshot;
    if (!vm && a.pending?.includes('boot'))
      vm = (await c.call('vm.boot', { ...b.boot, key: attemptKey(key, a, 'boot') }).catch(nothing))?.id;
    if (!snap && vm && a.pending?.includes('snapshot'))
      snap = (await c.call('snapshot.create', { vm, resume: false, key: attemptKey(key, a, 'snapshot') }).catch(nothing))?.id;
    if (vm) await c.call('vm.destroy', { id: vm }).catch(gone);
    if (snap && (await getTemplate(ctx.buckets.templates, b.name, ctx.log))?.value.snapshot !== snap)
      await c.call('snapshot.delete', { id: snap, cascade: false }).catch(gone);
    return true;
  } catch (err) {
    ctx.log.warn({ err, template: b.name, key, attempt: a }, 'cleaning up a template build attempt failed; kept for the next sweep');
    return false;
  }
}

/** The older attempts of `b` that are still not cleaned up after one more try. */
export async function sweepLeft(ctx: SchedContext, key: string, b: Build): Promise<Attempt[]> {
  const out: Attempt[] = [];
  for (const a of b.left ?? []) if (!(await undoAttempt(ctx, key, b, a))) out.push(a);
  return out;
}

/**
 * Ends a build: cleans up every attempt in it (the current one too: its snapshot is kept if the
 * template names it) and drops the record, or keeps it, marked over, with what could not be
 * cleaned up yet, for the reaper.
 */
export async function finishBuild(ctx: SchedContext, key: string, b: Build): Promise<void> {
  const left = await sweepLeft(ctx, key, { ...b, left: [...(b.left ?? []), attemptOf(b)] });
  if (left.length === 0) await dropBuild(ctx.buckets.templates, key, ctx.log);
  else await saveBuild(ctx.buckets.templates, key, { ...nextAttempt(b, b.host, false), left, over: true }, ctx.log);
}

const JobState = z.looseObject({ state: z.string(), retry: z.boolean().optional() });

/** Whether the job under `key` has ended (done, or failed for good), or its record is gone. */
export async function jobEnded(requests: KV, key: string): Promise<boolean> {
  const e = await requests.get(key);
  if (!e || e.operation !== 'PUT') return true;
  const r = JobState.safeParse(e.json());
  if (!r.success) return false;
  return r.data.state === 'done' || (r.data.state === 'failed' && !r.data.retry);
}

/**
 * The reaper's sweep of build records: one whose job ended without cleaning up (refused past its
 * last delivery, or its hosts were down) is cleaned up now, and dropped once nothing is left.
 */
export async function reapBuilds(ctx: SchedContext): Promise<void> {
  for (const key of await buildKeys(ctx.buckets.templates)) {
    const b = await readBuild(ctx.buckets.templates, key, ctx.log);
    if (!b || (!b.over && !(await jobEnded(ctx.buckets.requests, key)))) continue;
    await finishBuild(ctx, key, b);
  }
  // A template boot's host record whose job ended on a failure that left it (the last delivery's).
  for (const key of await buildKeys(ctx.buckets.templates, 'boot'))
    if (await jobEnded(ctx.buckets.requests, key)) await dropBootHost(ctx.buckets.templates, key, ctx.log);
}
