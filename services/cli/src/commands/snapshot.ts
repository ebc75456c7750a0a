import type { Command } from 'commander';
import { collect, type CliContext } from './context.js';

const actions = () => import('../actions/snapshot.js');

/** `forky snapshot create | ls | tree | rm`. */
export function registerSnapshot(program: Command, cli: CliContext): void {
  const snapshot = program.command('snapshot').description('snapshots');
  snapshot
    .command('create <vm>')
    .description('freeze a VM into a snapshot (the VM is resumed after, unless --paused)')
    .option('--paused', 'leave the VM paused')
    .option('--keep', "never expired by its host's snapshot retention (deleted only by `snapshot rm`)")
    .action(cli.lazy(actions, 'create'));
  snapshot
    .command('ls')
    .description('list snapshots on every host; the filters given must all match')
    .option('--label <k=v>', 'taken of a VM with this label (repeatable: all of them)', collect, [])
    .option('--vm <id>', 'taken of this VM')
    .option('--image <name>', 'of this image')
    .action(cli.lazy(actions, 'ls'));
  snapshot
    .command('tree')
    .description('the lineage of every snapshot: image -> snapshot -> ... as recorded in JetStream')
    .action(cli.lazy(actions, 'tree'));
  snapshot
    .command('rm <id>')
    .description('delete a snapshot; refused while VMs or snapshots depend on it, unless --cascade')
    .option('--cascade', 'also destroy the VMs and snapshots that depend on it')
    .action(cli.lazy(actions, 'rm'));
}
