import type { Command } from 'commander';
import type { CliContext } from './context.js';

/** `forky batch submit FILE`: many forks in one keyed request. */
export function registerBatch(program: Command, cli: CliContext): void {
  const batch = program.command('batch').description('fork batches');
  batch
    .command('submit <file>')
    .description(
      'submit a JSON file of fork requests ([{source, count, host?, labels?, perChild?: [{labels?, env?}]}, …] or {items: […]}); reports each child',
    )
    .action(cli.lazy(() => import('../actions/batch.js'), 'submit'));
}
