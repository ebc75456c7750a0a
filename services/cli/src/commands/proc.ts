import type { Command } from 'commander';
import { parsePid, parseSignal } from '../sandbox-args.js';
import type { CliContext } from './context.js';

const actions = () => import('../actions/proc.js');

/** `forky vm ps | logs | kill`: the processes the guest agent started. */
export function registerProc(vm: Command, cli: CliContext): void {
  vm.command('ps <id>')
    .description('list the processes forky started in the guest (running, and the last ones that exited)')
    .action(cli.lazy(actions, 'ps'));

  vm.command('logs')
    .argument('<id>')
    .argument('<pid>', 'process id (forky vm ps)', parsePid)
    .description("a process's output: what the guest kept of it (its last 1 MiB), then with --follow what comes until it exits")
    .option('-f, --follow', 'keep printing new output until the process exits (or Ctrl-C)')
    .action(cli.lazy(actions, 'logs'));

  vm.command('kill')
    .argument('<id>')
    .argument('<pid>', 'process id (forky vm ps)', parsePid)
    .description('send a signal to a process in the guest')
    .option('-s, --signal <sig>', 'TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP or CONT (a name or its number)', parseSignal, 'TERM')
    .action(cli.lazy(actions, 'kill'));
}
