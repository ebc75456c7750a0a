import { Option, type Command } from 'commander';
import { APP_HELP, collect, positiveInt, type CliContext } from './context.js';
import { IDLE_HELP, idleOption, ttlOption } from './lifetime-options.js';

/** `forky fork SOURCE --count N`: a VM or a snapshot into N children. */
export function registerFork(program: Command, cli: CliContext): void {
  program
    .command('fork <source>')
    .description('fork a VM or a snapshot into N children, each resuming its state')
    .requiredOption('--count <n>', 'children', positiveInt('count'))
    .option('--host <id>', 'pin to a host')
    .option('--spread', 'spread the children over every live host (the snapshot travels through the object store)')
    .option('--live', 'when forking a VM, keep it running (it stops only for the pause hostd reports)')
    .option('--resume-parent', 'the same as --live')
    .addOption(
      new Option('--until <when>', 'return once children are ready (agent answers, identity set) or running (vCPUs run; the rest follows)')
        .choices(['ready', 'running'])
        .default('ready'),
    )
    .option('--app <dir[:/mnt]>', `${APP_HELP}; every child mounts it`, collect, [])
    .option('--label <k=v>', "a label on every child, on top of the source's (repeatable)", collect, [])
    .option('--env <k=v>', 'an environment entry every child finds in /run/forky/env (repeatable)', collect, [])
    .addOption(ttlOption("every child's TTL, counted from its start (default: the source's)"))
    .addOption(idleOption(`every child's idle rule (default: the source's): ${IDLE_HELP}`))
    .action(cli.lazy(() => import('../actions/fork.js'), 'fork'));
}
