import type { Command } from 'commander';
import { newId } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { renderTree } from '../tree.js';
import type { CliContext } from './context.js';

/** `forky snapshot create | ls | tree | rm`. */
export function registerSnapshot(program: Command, cli: CliContext): void {
  const snapshot = program.command('snapshot').description('snapshots');
  snapshot
    .command('create <vm>')
    .description('freeze a VM into a snapshot (the VM is resumed after, unless --paused)')
    .option('--paused', 'leave the VM paused')
    .action(
      cli.action(async (vmId: string, o: { paused?: boolean }, cmd: Command) => {
        const key = newId('snap', 16);
        const s = await cli.withSession(cmd, (x) => x.call('snapshot.create', { vm: vmId, resume: !o.paused, key }));
        if (cli.json(cmd)) printJson(s);
        else printTable([s], ['id', 'host', 'vm', 'parentSnapshot', 'createdAt']);
      }),
    );
  snapshot
    .command('ls')
    .description('list snapshots on every host')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const { snapshots } = await cli.withSession(cmd, (s) => s.call('snapshot.list', {}));
        if (cli.json(cmd)) printJson(snapshots);
        else printTable(snapshots, ['id', 'host', 'vm', 'parentSnapshot', 'image', 'createdAt']);
      }),
    );
  snapshot
    .command('tree')
    .description('the lineage of every snapshot: image -> snapshot -> ... as recorded in JetStream')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const tree = await cli.withSession(cmd, (s) => s.call('snapshot.tree', {}));
        if (cli.json(cmd)) printJson(tree);
        else process.stdout.write(renderTree(tree.nodes));
      }),
    );
  snapshot
    .command('rm <id>')
    .description('delete a snapshot; refused while VMs or snapshots depend on it, unless --cascade')
    .option('--cascade', 'also destroy the VMs and snapshots that depend on it')
    .action(
      cli.action(async (id: string, o: { cascade?: boolean }, cmd: Command) => {
        // No key in this request's contract: sent once.
        const r = await cli.withSession(cmd, (s) => s.call('snapshot.delete', { id, cascade: !!o.cascade }));
        if (cli.json(cmd)) printJson(r);
        else process.stdout.write(`deleted ${r.snapshots.join(', ')}${r.vms.length > 0 ? `; destroyed ${r.vms.join(', ')}` : ''}\n`);
      }),
    );
}
