import type { Command } from 'commander';
import type { CliContext } from './context.js';
import { execOptions } from './exec.js';

export const DEFAULT_SHELL = ['/bin/sh', '-l'];

/** `forky vm shell ID [-- CMD…]`: an interactive shell (or CMD) on a PTY in the guest. */
export function registerShell(vm: Command, cli: CliContext): void {
  execOptions(
    vm
      .command('shell <id> [cmd...]')
      .description(`an interactive shell in the guest on a pseudo-terminal (default ${DEFAULT_SHELL.join(' ')}); exits with its code`),
    'deadline of the shell in the guest (default 0: none)',
  ).action(cli.lazy(() => import('../actions/shell.js'), 'shell'));
}
