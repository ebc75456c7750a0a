import { NotFoundError, type Logger } from '@forky/base';
import type { ForkAbandonResult, ForkResult, VmInfo } from '@forky/contract';
import type { Requests } from '../requests.js';

/**
 * fork.abandon: the scheduler gave up the keyed fork `key` for good (it placed the share
 * elsewhere, or the fork failed), so nobody will be handed its children: they are destroyed, now
 * if it is done, else once it ends. A child already gone is not an error; one that cannot be
 * destroyed is logged (the reply lists only those destroyed).
 */
export async function abandonFork(
  requests: Requests,
  key: string,
  destroy: (id: string) => Promise<VmInfo>,
  log: Logger,
): Promise<ForkAbandonResult> {
  const destroyed: string[] = [];
  const found = await requests.abandon(key, 'fork', async (outcome) => {
    const children = (outcome as ForkResult).children;
    await Promise.all(
      children.map((c) =>
        destroy(c.id).then(
          () => void destroyed.push(c.id),
          (err: unknown) => {
            if (!(err instanceof NotFoundError)) log.warn({ err, vm: c.id, key }, 'a child of an abandoned fork was not destroyed');
          },
        ),
      ),
    );
    log.info({ key, children: children.map((c) => c.id) }, 'a fork its caller gave up: its children destroyed');
  });
  return { found, destroyed: found === 'done' ? destroyed : [] };
}
