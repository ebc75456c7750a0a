import type { Command } from 'commander';
import { newId } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { renderTree } from '../tree.js';
import type { CliContext } from '../commands/context.js';
import { parsePairs } from './vm.js';

export async function create(cli: CliContext, vmId: string, o: { paused?: boolean; keep?: boolean }, cmd: Command): Promise<void> {
  const key = newId('snap', 16);
  const s = await cli.withSession(cmd, (x) => x.call('snapshot.create', { vm: vmId, resume: !o.paused, keep: !!o.keep, key }));
  if (cli.json(cmd)) printJson(s);
  else printTable([s], ['id', 'host', 'vm', 'parentSnapshot', 'createdAt']);
}

export async function ls(cli: CliContext, o: { label: string[]; vm?: string; image?: string }, cmd: Command): Promise<void> {
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
    printTable(rows, ['id', 'host', 'vm', 'parentSnapshot', 'image', 'createdAt', 'expiresAt', 'labels']);
  }
}

export async function tree(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const tree = await cli.withSession(cmd, (s) => s.call('snapshot.tree', {}));
  if (cli.json(cmd)) printJson(tree);
  else process.stdout.write(renderTree(tree.nodes));
}

export async function rm(cli: CliContext, id: string, o: { cascade?: boolean }, cmd: Command): Promise<void> {
  // No key in this request's contract: sent once.
  const r = await cli.withSession(cmd, (s) => s.call('snapshot.delete', { id, cascade: !!o.cascade }));
  if (cli.json(cmd)) printJson(r);
  else process.stdout.write(`deleted ${r.snapshots.join(', ')}${r.vms.length > 0 ? `; destroyed ${r.vms.join(', ')}` : ''}\n`);
}
