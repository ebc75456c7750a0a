import { ForkyError, ValidationError, asForkyError, delay } from '@forky/base';
import type { HostdClient } from '@forky/bus';
import { boundedText, truncateUtf8, type ExecResult, type TemplateCreateRequest, type TemplateInfo } from '@forky/contract';
import type { SchedContext } from './context.js';
import { subKey } from './fork.js';
import { TRANSIENT } from './jobs.js';
import { pickHost } from './placement.js';
import { withUndo } from './rollback.js';
import { dropBuild, getTemplate, openBuild, putTemplate, saveBuild } from './template-store.js';

/** How much of a failed step's stderr its error carries. */
const STDERR_TAIL_BYTES = 2048;
/** Between two tries of the ready command. */
const READY_POLL_MS = 300;
/** A host call's own deadline beyond the guest command's timeout. */
const CALL_SLACK_MS = 30_000;

/**
 * Makes a template (one job, exactly once under `key`): boots the image on one host, runs each
 * step, polls the ready command, freezes the VM (`snapshot.create`, not resumed), publishes the
 * snapshot so any host can fork it, files it under its name and destroys the builder VM. A
 * failure destroys the builder and deletes the snapshot, and leaves the name as it was.
 *
 * Every hostd call has a sub-key of `key` and of the build's generation: a delivery that takes
 * over from a dead scheduler joins the calls it made; one after a failed attempt (rolled back,
 * generation bumped) starts afresh. The build record pins the host across deliveries.
 */
export async function createTemplate(ctx: SchedContext, req: TemplateCreateRequest, key: string, last: boolean): Promise<TemplateInfo> {
  const kv = ctx.buckets.templates;
  const made = await getTemplate(kv, req.name, ctx.log);
  if (made?.value.key === key) return made.value;
  const pick = (): string => pickHost(ctx.hosts.statuses(), { memMiB: req.memMiB + 64, count: 1 }, req.host);
  let build = await openBuild(kv, key, pick, ctx.log);
  if (!req.host && !ctx.hosts.statuses().find((h) => h.id === build.host)?.alive) {
    // Its host died with the last attempt: nothing there to join.
    build = { host: pick(), gen: build.gen + 1 };
    await saveBuild(kv, key, build, ctx.log);
  }
  try {
    const info = await build1(ctx, req, key, build.host, (s) => subKey(key, `g${build.gen}/${s}`));
    await dropBuild(kv, key, ctx.log);
    return info;
  } catch (e) {
    const fe = asForkyError(e);
    if (last || !TRANSIENT.has(fe.code)) await dropBuild(kv, key, ctx.log);
    else await saveBuild(kv, key, { ...build, gen: build.gen + 1 }, ctx.log);
    throw fe;
  }
}

async function build1(
  ctx: SchedContext,
  req: TemplateCreateRequest,
  key: string,
  host: string,
  k: (step: string) => string,
): Promise<TemplateInfo> {
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const lap = (name: string, since: number): number => (timings[name] = Math.round(performance.now() - since));
  const on = <T>(fn: (c: HostdClient) => Promise<T>): Promise<T> => ctx.hosts.onHost(host, fn);
  return withUndo(ctx.log, { template: req.name, host }, async (u) => {
    const vm = await on((c) =>
      c.call('vm.boot', {
        image: req.image,
        memMiB: req.memMiB,
        cpus: req.cpus,
        ...(req.diskGiB ? { diskGiB: req.diskGiB } : {}),
        ...(req.network ? { network: req.network } : {}),
        key: k('boot'),
      }),
    );
    const destroy = (): Promise<unknown> =>
      ctx.hosts
        .client(host)
        .call('vm.destroy', { id: vm.id })
        .catch((e: unknown) => {
          if (asForkyError(e).code !== 'NOT_FOUND') throw e;
        });
    const builderGone = u.push(`destroy builder ${vm.id}`, destroy);
    lap('bootMs', t0);
    const exec = (cmd: string, timeoutMs: number, key: string): Promise<ExecResult> =>
      on((c) => c.call('vm.exec', { id: vm.id, cmd: ['/bin/sh', '-c', cmd], timeoutMs, key }, { timeoutMs: timeoutMs + CALL_SLACK_MS }));

    let t = performance.now();
    for (const [i, step] of req.run.entries()) {
      const r = await exec(step, req.stepTimeoutMs, k(`run/${i}`));
      if (r.exitCode !== 0) throw stepFailed(req.name, i, r);
    }
    lap('runMs', t);
    t = performance.now();
    if (req.ready) {
      const deadline = Date.now() + req.readyTimeoutMs;
      for (let n = 0; ; n++) {
        const left = Math.max(1_000, Math.min(req.stepTimeoutMs, deadline - Date.now()));
        const r = await exec(req.ready, left, k(`ready/${n}`));
        if (r.exitCode === 0) break;
        if (Date.now() + READY_POLL_MS >= deadline)
          throw new ForkyError(
            'TIMEOUT',
            `template ${req.name}: the ready command did not succeed within ${req.readyTimeoutMs} ms (${n + 1} tries; the last exited ${r.exitCode}${tail(r.stderr)})`,
            { details: { field: 'ready', timeoutMs: req.readyTimeoutMs, final: true } },
          );
        await delay(READY_POLL_MS);
      }
    }
    lap('readyMs', t);
    t = performance.now();
    const snap = await on((c) => c.call('snapshot.create', { vm: vm.id, resume: false, key: k('snapshot') }));
    // The builder is done with: it was all for the snapshot, which does not need it.
    await destroy();
    builderGone();
    u.push(`delete snapshot ${snap.id}`, () => ctx.hosts.client(host).call('snapshot.delete', { id: snap.id, cascade: false }));
    lap('snapshotMs', t);
    t = performance.now();
    await on((c) => c.call('snapshot.publish', { id: snap.id }));
    lap('publishMs', t);
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
    ctx.log.info({ template: req.name, snapshot: snap.id, replaced: replaced?.snapshot, timings: info.timings }, 'template made');
    return info;
  });
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
