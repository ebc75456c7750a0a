import { InvalidArgumentError, type Command } from 'commander';
import { newId } from '@forky/base';
import { Egress, type VmInfo } from '@forky/contract';
import { printJson } from '../output.js';
import type { CliContext } from '../commands/context.js';

/** `--egress` as the contract's policy; `dns` applies to an allow-list only. */
export function parseEgress(text: string, dns = true): Egress {
  const value = text === 'none' || text === 'internet' ? text : { allow: text.split(',').filter(Boolean), dns };
  const r = Egress.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues.find((i) => i.code === 'custom') ?? r.error.issues[0];
    throw new InvalidArgumentError(issue?.message ?? 'not a policy');
  }
  return r.data;
}

/** The policy as one line, as `--egress` takes it. */
export function egressText(e: Egress): string {
  return typeof e === 'string' ? e : `${e.allow.join(',')}${e.dns ? '' : ' (no DNS)'}`;
}

function printNetwork(cli: CliContext, cmd: Command, v: VmInfo): void {
  if (cli.json(cmd)) return printJson({ id: v.id, network: v.network ?? null });
  const n = v.network;
  if (!n) return void process.stdout.write(`${v.id}: this host reports no network policy\n`);
  const lines = [`egress      ${egressText(n.egress)}`, `enforced by ${n.enforcedBy}`];
  if (n.refused !== undefined) lines.push(`refused     ${n.refused}`);
  process.stdout.write(lines.join('\n') + '\n');
}

/** `forky vm net ID [--egress …]`: shows a VM's network policy, or changes it while the VM runs. */
export async function net(cli: CliContext, id: string, o: { egress?: string; dns: boolean }, cmd: Command): Promise<void> {
  const v = await cli.withSession(cmd, (s) =>
    o.egress === undefined
      ? s.call('vm.show', { id })
      : s.call('vm.network', { id, network: { egress: parseEgress(o.egress, o.dns) }, key: newId('net', 16) }),
  );
  printNetwork(cli, cmd, v);
}
