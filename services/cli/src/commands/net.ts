import { InvalidArgumentError, type Command } from 'commander';
import { newId } from '@forky/base';
import { Egress, type VmInfo } from '@forky/contract';
import { printJson } from '../output.js';
import type { CliContext } from './context.js';

export const EGRESS_HELP =
  'where the guest may connect: none | internet (public addresses only, the default) | ADDR[/LEN][:PORT],… (only those; IPv6 as [ADDR/LEN]:PORT)';

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
export function registerNet(vm: Command, cli: CliContext): void {
  vm.command('net <id>')
    .description('show a VM’s network policy (and what it refused), or change it: it holds from the next packet, open connections included')
    .option('--egress <policy>', EGRESS_HELP)
    .option('--no-dns', 'with an allow-list: no DNS either')
    .action(
      cli.action(async (id: string, o: { egress?: string; dns: boolean }, cmd: Command) => {
        const v = await cli.withSession(cmd, (s) =>
          o.egress === undefined
            ? s.call('vm.show', { id })
            : s.call('vm.network', { id, network: { egress: parseEgress(o.egress, o.dns) }, key: newId('net', 16) }),
        );
        printNetwork(cli, cmd, v);
      }),
    );
}
