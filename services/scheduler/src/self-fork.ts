import { ValidationError } from '@forky/base';
import { SelfForkSchedRequest, schedContract, subjects, type ForkResult, type SchedForkRequest } from '@forky/contract';
import type { EndpointDef } from '@forky/bus';

/** The env entry that makes a child part of a guest's self-fork tree (hostd's SELF_FORK_ENV). */
export const SELF_FORK_ENV = 'FORKY_SELF_FORK';

/** What the handler needs of the scheduler. */
export interface SelfForkScheduler {
  locate(kind: 'vm', id: string): Promise<string>;
  fork(req: SchedForkRequest): Promise<ForkResult>;
}

/**
 * A client's fork may not carry a self-fork token: only a host asking on its own subject (below)
 * may make children that belong to a guest's tree.
 */
export function refuseSelfForkEnv(req: SchedForkRequest): void {
  (req.perChild ?? []).forEach((c, i) => {
    if (c.env && SELF_FORK_ENV in c.env)
      throw new ValidationError(`perChild[${i}].env: ${SELF_FORK_ENV} is set by hosts only (a guest's self-fork)`, {
        field: `perChild.${i}.env.${SELF_FORK_ENV}`,
      });
  });
}

/**
 * A guest's spread self-fork, asked by its host on `forky.v1.sched.selffork.<host>` (that host's
 * user may publish only there): the source must be on that host, each token must name the source
 * as parent and its index in order; the fork is spread, with nothing else a client fork could add.
 */
export async function selfFork(s: SelfForkScheduler, req: SelfForkSchedRequest, subject: string): Promise<ForkResult> {
  const host = subject.slice(subjects.selfForks.length - 1);
  const at = await s.locate('vm', req.source);
  if (at !== host) throw new ValidationError(`source: ${req.source} is not on host ${host}, which asked`, { field: 'source' });
  if (req.tokens.length !== req.count) throw new ValidationError(`tokens: ${req.count} expected, one a child`, { field: 'tokens' });
  req.tokens.forEach((t, i) => {
    if (!t.startsWith(`${req.source},${i + 1},${req.count},`))
      throw new ValidationError(`tokens[${i}]: not child ${i + 1} of ${req.count} of ${req.source}`, { field: `tokens.${i}` });
  });
  return s.fork({
    source: req.source,
    count: req.count,
    resumeParent: req.live,
    until: 'ready',
    spread: true,
    perChild: req.tokens.map((t) => ({ env: { [SELF_FORK_ENV]: t } })),
    ...(req.labels ? { labels: req.labels } : {}),
    key: req.key,
  } as SchedForkRequest);
}

/** The endpoint, on every host's self-fork subject at once. */
export function selfForkEndpoint(s: SelfForkScheduler): EndpointDef {
  return {
    name: 'selffork',
    subject: subjects.selfForks,
    request: SelfForkSchedRequest,
    reply: schedContract.fork.reply,
    handler: (req, subject) => selfFork(s, req as SelfForkSchedRequest, subject),
  };
}
