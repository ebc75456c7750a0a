import type { Command } from 'commander';
import type { CliContext } from './context.js';

/** `forky req SUBJECT [JSON]`: a raw request, sent once whatever it is (the CLI cannot tell a read from a write here). */
export function registerReq(program: Command, cli: CliContext): void {
  program
    .command('req <subject> [json]')
    .description('send a raw JSON request to any subject and print the JSON reply (for those without the nats CLI)')
    .action(cli.lazy(() => import('../actions/req.js'), 'req'));
}
