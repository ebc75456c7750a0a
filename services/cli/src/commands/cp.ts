import type { Command } from 'commander';
import type { CliContext } from './context.js';

/** `forky cp SRC DST`: a file or a directory into a VM or out of it; one side is `VM:/path`. */
export function registerCp(program: Command, cli: CliContext): void {
  program
    .command('cp <src> <dst>')
    .description(
      'copy a file or a directory into a VM or out of it (like docker cp): forky cp ./x VM:/data/x, forky cp VM:/data/x ./x; - is stdin or stdout',
    )
    .action(cli.lazy(() => import('../actions/cp.js'), 'cp'));
}
