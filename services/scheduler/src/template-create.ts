import { CapacityError, ForkyError, ValidationError, asForkyError, delay } from '@forky/base';
import type { HostdClient } from '@forky/bus';
import {
  boundedText,
  truncateUtf8,
  type ExecResult,
  type SnapshotInfo,
  type TemplateCreateRequest,
  type TemplateInfo,
} from '@forky/contract';
import type { SchedContext } from './context.js';
import { triedAgain } from './jobs.js';
import { pickHost } from './placement.js';
import { attemptKey, attemptOf, finishBuild, newNonce, nextAttempt, sweepLeft, undoAttempt } from './template-build.js';
import { getTemplate, openBuild, putTemplate, readBuild, saveBuild, type BootSpec, type Build } from './template-store.js';

/** How much of a failed step's stderr its error carries. */
const STDERR_TAIL_BYTES = 2048;
/** Between two tries of the ready command. */
const READY_POLL_MS = 300;
/** A host call's own deadline beyond the guest command's timeout. */
const CALL_SLACK_MS = 30_000;

/**
 * Makes a template (one job, exactly once under `key`): boots the image on one host, runs each
 * step, polls the ready command, freezes the VM (`snapshot.create`, not resumed), destroys the
 * builder, publishes the snapshot so any host can fork it and files it under its name. A failure
 * destroys the builder and deletes the snapshot, and leaves the name as it was.
 *
 * The build record (template-store.ts) pins the host and says what the attempt made so far: the
 * builder, the steps done, the snapshot, and the calls sent with no reply yet. A delivery that
 * takes over from a dead scheduler resumes from it; every hostd call is keyed by the record's
 * nonce and the attempt's generation, so a repeat joins the first. A failed attempt is cleaned up (its unknown calls
 * repeated under their keys to learn what they made) before the generation is bumped; one whose
 * host is down is kept in the record and cleaned up by a later delivery or the reaper.
 */
export async function createTemplate(ctx: SchedContext, req: TemplateCreateRequest, key: string, last: boolean): Promise<TemplateInfo> {
  const kv = ctx.buckets.templates;
  const made = await getTemplate(kv, req.name, ctx.log);
  const pick = (): string => pickBuildHost(ctx, req);
  const boot: BootSpec = {
    image: req.image,
    memMiB: req.memMiB,
    cpus: req.cpus,
    ...(req.diskGiB ? { diskGiB: req.diskGiB } : {}),
    ...(req.network ? { network: req.network } : {}),
  };
  if (made?.value.key === key) {
    const done = await readBuild(kv, key, ctx.log);
    if (done) await finishBuild(ctx, key, done);
    return made.value;
  }
  let b = await openBuild(kv, key, () => ({ name: req.name, boot, host: pick(), gen: 0, nonce: newNonce() }), ctx.log);
  const save = async (next: Build): Promise<void> => {
    b = next;
    await saveBuild(kv, key, b, ctx.log);
  };
  // A request sent again under its key after it failed: the reaper must not sweep this run's record.
  if (b.over) await save(nextAttempt(b, b.host, false));
  // Its host died with the last attempt: nothing there to join; what it made is cleaned up once it is back.
  if (!req.host && !ctx.hosts.statuses().find((h) => h.id === b.host)?.alive) await save(nextAttempt(b, pick(), true));
  if (b.left?.length) {
    const left = await sweepLeft(ctx, key, b);
    await save({ ...b, left: left.length ? left : undefined });
  }
  try {
    const info = await build1(ctx, req, key, () => b, save);
    await finishBuild(ctx, key, b);
    return info;
  } catch (e) {
    const fe = asForkyError(e);
    const clean = await undoAttempt(ctx, key, b, attemptOf(b));
    const next = nextAttempt(b, b.host, !clean);
    if (last || !triedAgain(fe)) await finishBuild(ctx, key, next);
    else await save(next);
    throw fe;
  }
}

async function build1(
  ctx: SchedContext,
  req: TemplateCreateRequest,
  key: string,
  cur: () => Build,
  save: (b: Build) => Promise<void>,
): Promise<TemplateInfo> {
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const lap = (name: string, since: number): number => (timings[name] = Math.round(performance.now() - since));
  const { host } = cur();
  const k = (step: string): string => attemptKey(key, cur(), step);
  const on = <T>(fn: (c: HostdClient) => Promise<T>): Promise<T> => ctx.hosts.onHost(host, fn);
  // Recorded before each call that makes something: if its reply never comes, a cleanup repeats it under its key.
  const note = (patch: Partial<Build>): Promise<void> => save({ ...cur(), ...patch });
  let snap: SnapshotInfo;
  const had = cur().snapshot;
  if (had) {
    snap = await on((c) => c.call('snapshot.show', { id: had }));
  } else {
    let vm = cur().vm;
    if (!vm) {
      await note({ pending: ['boot'] });
      vm = (await on((c) => c.call('vm.boot', { ...cur().boot, key: k('boot') }))).id;
      await note({ vm, pending: undefined });
    }
    const id = vm;
    lap('bootMs', t0);
    const exec = (cmd: string, timeoutMs: number, key: string): Promise<ExecResult> =>
      on((c) => c.call('vm.exec', { id, cmd: ['/bin/sh', '-c', cmd], timeoutMs, key }, { timeoutMs: timeoutMs + CALL_SLACK_MS }));

    let t = performance.now();
    // A delivery that took over skips the steps already done: hostd forgets keyed execs after a while.
    for (let i = cur().steps ?? 0; i < req.run.length; i++) {
      const r = await exec(req.run[i] as string, req.stepTimeoutMs, k(`run/${i}`));
      if (r.exitCode !== 0) throw stepFailed(req.name, i, r);
      await note({ steps: i + 1 });
    }
    lap('runMs', t);
    t = performance.now();
    if (req.ready) await pollReady(req, (left, n) => exec(req.ready as string, left, k(`ready/${n}`)));
    lap('readyMs', t);
    t = performance.now();
    await note({ pending: ['snapshot'] });
    // `keep`: the template's snapshot is never expired by its host's retention, though no VM runs on it.
    snap = await on((c) => c.call('snapshot.create', { vm: id, resume: false, keep: true, key: k('snapshot') }));
    await note({ snapshot: snap.id, pending: undefined });
    lap('snapshotMs', t);
  }
  const t = performance.now();
  // Templates are always published: from the moment the snapshot is frozen, while the builder goes.
  const snapId = snap.id;
  // publishMs is the publish's own time: the builder's teardown runs alongside and is not in it.
  let publishedMs = 0;
  const publishing = on((c) => c.call('snapshot.publish', { id: snapId })).then((r) => {
    publishedMs = Math.round(performance.now() - t);
    return r;
  });
  publishing.catch(() => undefined);
  const builder = cur().vm;
  if (builder) {
    // The builder is done with: it was all for the snapshot, which does not need it.
    await ctx.hosts
      .client(host)
      .call('vm.destroy', { id: builder })
      .catch((e: unknown) => {
        if (asForkyError(e).code !== 'NOT_FOUND') throw e;
      });
    await note({ vm: undefined });
  }
  await publishing;
  timings.publishMs = publishedMs;
  const info: TemplateInfo = {
    name: req.name,
    snapshot: snap.id,
    image: snap.image,
    imageId: snap.profile.imageId,
    memMiB: snap.profile.memMiB,
    cpus: snap.profile.cpus,
    run: req.run,
    ...(req.ready ? { ready: req.ready } : {}),
    createdAt: new Date().toISOString(),
    host,
    sizes: snap.sizes,
    timings: { ...timings, totalMs: Math.round(performance.now() - t0) },
    key,
  };
  const replaced = await putTemplate(ctx.buckets.templates, info, ctx.log);
  // Handed over to the template: no cleanup may delete it now.
  await note({ snapshot: undefined });
  ctx.log.info({ template: req.name, snapshot: snap.id, replaced: replaced?.snapshot, timings: info.timings }, 'template made');
  return info;
}

/**
 * The host to build on: the pinned one, or the live one with the most free memory that has the
 * image (hostd boots only images it has). Also the job's precheck: refused before anything is queued.
 */
export function pickBuildHost(ctx: SchedContext, req: TemplateCreateRequest): string {
  const all = ctx.hosts.statuses();
  const host = memoryField(() => pickHost(all, { memMiB: req.memMiB + 64, count: 1 }, req.host));
  if (all.find((h) => h.id === host)?.images.includes(req.image)) return host;
  if (req.host) throw new ValidationError(`host ${req.host} has no image ${req.image}`, { field: 'image' });
  const withImage = all.filter((h) => h.images.includes(req.image));
  if (!withImage.some((h) => h.alive)) throw new ValidationError(`no live host has image ${req.image}`, { field: 'image' });
  return memoryField(() => pickHost(withImage, { memMiB: req.memMiB + 64, count: 1 }));
}

/** A placement refused for memory is the request's memMiB's doing: the error names it. */
function memoryField(pick: () => string): string {
  try {
    return pick();
  } catch (e) {
    const fe = asForkyError(e);
    if (fe.code === 'CAPACITY' && !fe.details?.['field']) throw new CapacityError(fe.message, { field: 'memMiB' }, fe);
    throw e;
  }
}

/** Polls the ready command until it exits 0, or fails for good (TIMEOUT, final) past readyTimeoutMs. */
async function pollReady(req: TemplateCreateRequest, run: (timeoutMs: number, n: number) => Promise<ExecResult>): Promise<void> {
  const deadline = Date.now() + req.readyTimeoutMs;
  for (let n = 0; ; n++) {
    const r = await run(Math.max(1_000, Math.min(req.stepTimeoutMs, deadline - Date.now())), n);
    if (r.exitCode === 0) return;
    if (Date.now() + READY_POLL_MS >= deadline)
      throw new ForkyError(
        'TIMEOUT',
        `template ${req.name}: the ready command did not succeed within ${req.readyTimeoutMs} ms (${n + 1} tries; the last exited ${r.exitCode}${tail(r.stderr)})`,
        { details: { field: 'ready', timeoutMs: req.readyTimeoutMs, final: true } },
      );
    await delay(READY_POLL_MS);
  }
}

/** ": <the last 2 KiB of stderr>", shown as text whatever the guest wrote. */
function tail(stderr: string): string {
  if (!stderr) return '';
  const bytes = Buffer.from(stderr);
  const cut = bytes.length > STDERR_TAIL_BYTES ? `…${bytes.subarray(bytes.length - STDERR_TAIL_BYTES).toString()}` : stderr;
  return `: ${boundedText(truncateUtf8(cut, STDERR_TAIL_BYTES + 8), STDERR_TAIL_BYTES + 8)}`;
}

function stepFailed(name: string, i: number, r: ExecResult): ValidationError {
  const why = r.exitCode === 124 ? 'timed out (exit 124)' : `exited ${r.exitCode}`;
  return new ValidationError(`template ${name}: run step ${i + 1} ${why}${tail(r.stderr)}`, {
    field: `run.${i}`,
    step: i + 1,
    exitCode: r.exitCode,
  });
}
