import type { Command } from 'commander';
import type { CliContext } from './context.js';

/** `forky vm watch ID PATH [--recursive]`: changes under a path in the guest, until Ctrl-C. */
export function registerWatch(vm: Command, cli: CliContext): void {
  vm.command('watch <id> <path>')
    .description('print changes to a file or directory in the guest as they happen (one line each; --json: one object each), until Ctrl-C')
    .option('-r, --recursive', 'watch the directories under it too')
    .action(cli.lazy(() => import('../actions/watch.js'), 'watch'));
}
