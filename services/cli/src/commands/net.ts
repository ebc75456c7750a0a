import type { Command } from 'commander';
import type { CliContext } from './context.js';

export const EGRESS_HELP =
  'where the guest may connect: none | internet (public addresses only, the default) | ADDR[/LEN][:PORT],… (only those; IPv6 as [ADDR/LEN]:PORT)';

/** `forky vm net ID [--egress …]`: shows a VM's network policy, or changes it while the VM runs. */
export function registerNet(vm: Command, cli: CliContext): void {
  vm.command('net <id>')
    .description('show a VM’s network policy (and what it refused), or change it: it holds from the next packet, open connections included')
    .option('--egress <policy>', EGRESS_HELP)
    .option('--no-dns', 'with an allow-list: no DNS either')
    .action(cli.lazy(() => import('../actions/net.js'), 'net'));
}
