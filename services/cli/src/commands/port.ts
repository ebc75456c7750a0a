import type { Command } from 'commander';
import type { CliContext } from './context.js';

/** `forky port VM GUESTPORT [--local [ADDR:]PORT]`: local TCP connections to a guest port, over NATS, until Ctrl-C. */
export function registerPort(program: Command, cli: CliContext): void {
  program
    .command('port <vm> <guestport>')
    .description(
      'forward local TCP connections to a port inside a VM (like kubectl port-forward), over NATS through its guest agent, until Ctrl-C',
    )
    .option('--local <[addr:]port>', 'where to listen (default 127.0.0.1:GUESTPORT; port 0: any free port)')
    .action(cli.lazy(() => import('../actions/port.js'), 'port'));
}
