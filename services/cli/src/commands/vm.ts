import type { Command } from 'commander';
import { APP_HELP, collect, nonNegativeInt, positiveInt, type CliContext } from './context.js';
import { IDLE_HELP, idleOption, ttlOption } from './lifetime-options.js';
import { EGRESS_HELP } from './net.js';
import { selfForkOption } from './self-fork-option.js';

const actions = () => import('../actions/vm.js');

/** `forky vm boot | ls | show | pause | resume | rm | app`; the `vm` command, for the sandbox commands (exec, ps…) to join. */
export function registerVm(program: Command, cli: CliContext): Command {
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
    .addOption(ttlOption('destroyed this long after it was made (e.g. 10m, 2h; `forky vm extend` moves it)'))
    .addOption(idleOption(IDLE_HELP))
    .addOption(selfForkOption())
    .action(cli.lazy(actions, 'boot'));

  vm.command('ls')
    .description('list VMs on every host; the filters given must all match')
    .option('--label <k=v>', 'has this label (repeatable: all of them)', collect, [])
    .option('--state <state>', 'in this state (repeatable or comma-separated: any of them)', collect, [])
    .option('--parent <snap>', 'forked from this snapshot')
    .option('--image <name>', 'of this image')
    .option('--template <name>', 'booted from this template')
    .action(cli.lazy(actions, 'ls'));

  for (const [name, what] of [
    ['show', 'show a VM'],
    ['pause', 'pause a VM'],
    ['resume', 'resume a paused VM'],
  ] as const) {
    vm.command(`${name} <id>`).description(what).action(cli.lazy(actions, name));
  }

  vm.command('extend <id>')
    .description('set when a VM is destroyed: --ttl from now (it may shorten its life too; a VM without a TTL gets one)')
    .addOption(ttlOption('e.g. 30m, 2h').makeOptionMandatory())
    .action(cli.lazy(actions, 'extend'));

  vm.command('rm <ids...>').description('destroy VMs: their processes and files are gone').action(cli.lazy(actions, 'rm'));

  vm.command('app <id>')
    .description('mount host directories in a running VM: a new mount point, or a changed directory as a new layer in place of the old')
    .requiredOption('--app <dir[:/mnt]>', APP_HELP, collect, [])
    .action(cli.lazy(actions, 'app'));
  return vm;
}
