import type { Command } from 'commander';
import { ValidationError, newId } from '@forky/base';
import type { VmInfo } from '@forky/contract';
import { printJson, printTable } from '../output.js';
import { APP_HELP, collect, nonNegativeInt, positiveInt, type CliContext } from './context.js';
import { EGRESS_HELP, parseEgress } from './net.js';

export const VM_COLUMNS = [
  'id',
  'name',
  'host',
  'state',
  'image',
  'memMiB',
  'parentSnapshot',
  'pid',
  'labels',
] as const satisfies ReadonlyArray<keyof VmInfo>;

/** `K=V` options (`--label`, `--env`) as a record; the contract checks the keys and values. */
export function parsePairs(pairs: readonly string[], field: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const at = p.indexOf('=');
    if (at <= 0) throw new ValidationError(`--${field} ${JSON.stringify(p)}: expected KEY=VALUE`, { field });
    out[p.slice(0, at)] = p.slice(at + 1);
  }
  return out;
}

/** Rows for a table: labels as `k=v,k=v`. */
export const vmRows = (vms: readonly VmInfo[]): Array<Omit<VmInfo, 'labels'> & { labels?: string }> =>
  vms.map(({ labels, ...v }) => ({
    ...v,
    ...(labels
      ? {
          labels: Object.entries(labels)
            .map(([k, x]) => `${k}=${x}`)
            .join(','),
        }
      : {}),
  }));

interface ListOptions {
  label: string[];
  state: string[];
  parent?: string;
  image?: string;
}

interface BootOptions {
  image?: string;
  mem?: number;
  cpus?: number;
  template?: string;
  gpus: number;
  app: string[];
  host?: string;
  egress?: string;
  dns: boolean;
  disk?: number;
  name?: string;
  label: string[];
}

/** `forky vm boot | ls | show | pause | resume | rm | app`; the `vm` command, for the sandbox commands (exec, ps…) to join. */
export function registerVm(program: Command, cli: CliContext): Command {
  const printVms = (cmd: Command, vms: VmInfo[], one = false): void =>
    cli.json(cmd) ? printJson(one ? vms[0] : vms) : printTable(vmRows(vms), VM_COLUMNS);
  const vm = program.command('vm').description('virtual machines');

  vm.command('boot')
    .description('boot a VM; returns once its guest agent answers')
    // No defaults here: hostd's apply (tiny, 256 MiB, 1 vCPU), and a template's VM has the template's.
    .option('--image <name>', 'image (default tiny)')
    .option('--mem <MiB>', 'memory (default 256)', positiveInt('mem'))
    .option('--cpus <n>', 'vCPUs (default 1)', positiveInt('cpus'))
    .option('--template <name>', 'fork a template (`forky template create`) instead of booting: its image, memory and vCPUs, on any host')
    .option('--gpus <n>', 'host GPUs passed through (VFIO); such a VM cannot be snapshotted or forked', nonNegativeInt('gpus'), 0)
    .option('--app <dir[:/mnt]>', APP_HELP, collect, [])
    .option('--host <id>', 'pin to a host')
    .option('--egress <policy>', EGRESS_HELP)
    .option('--no-dns', 'with an --egress allow-list: no DNS either')
    .option('--disk <GiB>', "disk size (sparse; the guest's file system grows to fit); default: the image's", positiveInt('disk'))
    .option('--name <name>', 'a name unique in the cluster (children get none)')
    .option('--label <k=v>', 'a label (repeatable); children inherit it', collect, [])
    .action(
      cli.action(async (o: BootOptions, cmd: Command) => {
        const key = newId('boot', 16);
        const network = o.egress === undefined ? undefined : { egress: parseEgress(o.egress, o.dns) };
        const labels = parsePairs(o.label, 'label');
        const v = await cli.withSession(cmd, async (s) => {
          const apps = await s.uploadApps(o.app);
          return s.call('vm.boot', {
            key,
            ...(o.image ? { image: o.image } : {}),
            ...(o.mem ? { memMiB: o.mem } : {}),
            ...(o.cpus ? { cpus: o.cpus } : {}),
            ...(o.template ? { template: o.template } : {}),
            ...(o.gpus ? { gpus: o.gpus } : {}),
            ...(apps.length ? { apps } : {}),
            ...(o.host ? { host: o.host } : {}),
            ...(network ? { network } : {}),
            ...(o.disk ? { diskGiB: o.disk } : {}),
            ...(o.name ? { name: o.name } : {}),
            ...(o.label.length ? { labels } : {}),
          });
        });
        printVms(cmd, [v], true);
      }),
    );

  vm.command('ls')
    .description('list VMs on every host; the filters given must all match')
    .option('--label <k=v>', 'has this label (repeatable: all of them)', collect, [])
    .option('--state <state>', 'in this state (repeatable or comma-separated: any of them)', collect, [])
    .option('--parent <snap>', 'forked from this snapshot')
    .option('--image <name>', 'of this image')
    .action(
      cli.action(async (o: ListOptions, cmd: Command) => {
        const state = o.state.flatMap((s) => s.split(',')).filter((s) => s !== '');
        const filter = {
          ...(o.label.length ? { labels: parsePairs(o.label, 'label') } : {}),
          ...(state.length ? { state: state as VmInfo['state'][] } : {}),
          ...(o.parent ? { parent: o.parent } : {}),
          ...(o.image ? { image: o.image } : {}),
        };
        printVms(cmd, (await cli.withSession(cmd, (s) => s.call('vm.list', filter))).vms);
      }),
    );

  // No key in these requests' contract: the client sends them once (a lost reply is not re-sent).
  for (const [name, endpoint, what] of [
    ['show', 'vm.show', 'show a VM'],
    ['pause', 'vm.pause', 'pause a VM'],
    ['resume', 'vm.resume', 'resume a paused VM'],
  ] as const) {
    vm.command(`${name} <id>`)
      .description(what)
      .action(
        cli.action(async (id: string, _o: unknown, cmd: Command) =>
          printVms(cmd, [await cli.withSession(cmd, (s) => s.call(endpoint, { id }))], true),
        ),
      );
  }

  vm.command('rm <ids...>')
    .description('destroy VMs: their processes and files are gone')
    .action(
      cli.action(async (ids: string[], _o: unknown, cmd: Command) => {
        const gone = await cli.withSession(cmd, async (s) => {
          const out: VmInfo[] = [];
          for (const id of ids) out.push(await s.call('vm.destroy', { id }));
          return out;
        });
        printVms(cmd, gone);
      }),
    );

  vm.command('app <id>')
    .description('mount host directories in a running VM: a new mount point, or a changed directory as a new layer in place of the old')
    .requiredOption('--app <dir[:/mnt]>', APP_HELP, collect, [])
    .action(
      cli.action(async (id: string, o: { app: string[] }, cmd: Command) => {
        const key = newId('app', 16);
        const v = await cli.withSession(cmd, async (s) => s.call('vm.app', { id, apps: await s.uploadApps(o.app), key }));
        printVms(cmd, [v], true);
      }),
    );
  return vm;
}
