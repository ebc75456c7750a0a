import type { Command } from 'commander';
import { newId } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { renderTree } from '../tree.js';
import { collect, type CliContext } from './context.js';
import { parsePairs } from './vm.js';

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
    .description('list snapshots on every host; the filters given must all match')
    .option('--label <k=v>', 'taken of a VM with this label (repeatable: all of them)', collect, [])
    .option('--vm <id>', 'taken of this VM')
    .option('--image <name>', 'of this image')
    .action(
      cli.action(async (o: { label: string[]; vm?: string; image?: string }, cmd: Command) => {
        const filter = {
          ...(o.label.length ? { labels: parsePairs(o.label, 'label') } : {}),
          ...(o.vm ? { vm: o.vm } : {}),
          ...(o.image ? { image: o.image } : {}),
        };
        const { snapshots } = await cli.withSession(cmd, (s) => s.call('snapshot.list', filter));
        if (cli.json(cmd)) printJson(snapshots);
        else {
          const rows = snapshots.map(({ labels, ...x }) => ({
            ...x,
            labels:
              labels &&
              Object.entries(labels)
                .map(([k, v]) => `${k}=${v}`)
                .join(','),
          }));
          printTable(rows, ['id', 'host', 'vm', 'parentSnapshot', 'image', 'createdAt', 'labels']);
        }
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
