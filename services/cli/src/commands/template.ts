import type { Command } from 'commander';
import { collect, positiveInt, type CliContext } from './context.js';
import { durationOption } from './lifetime-options.js';
import { EGRESS_HELP } from './net.js';

const actions = () => import('../actions/template.js');

/** The contract's bound (kept here so that the help needs no zod; cli-startup.test.ts checks it is the contract's). */
export const TEMPLATE_READY_TIMEOUT_MAX_MS = 30 * 60_000;

const RUN_HELP =
  "a shell step run as /bin/sh -c STEP, in order (repeatable); a process it leaves running is in the template's VMs: " +
  'redirect its output and detach it, e.g. \'setsid sh -c "python3 -m http.server 8000" >/dev/null 2>&1 &\' ' +
  '(output left open holds the step until its timeout, which kills its process group)';

/** `forky template create | ls | show | rm`. */
export function registerTemplate(program: Command, cli: CliContext): void {
  const template = program.command('template').description("templates: a set-up VM's snapshot under a name; `vm boot --template` forks it");
  template
    .command('create <name>')
    .description('boot an image, run the steps, wait for --ready to succeed, and keep the snapshot as NAME (replacing an older one)')
    .option('--image <name>', 'image', 'tiny')
    .option('--run <cmd>', RUN_HELP, collect, [])
    .option('--ready <cmd>', 'polled after the steps until it exits 0; then the VM is frozen')
    .option('--mem <MiB>', 'memory (every VM of the template has it)', positiveInt('mem'), 256)
    .option('--cpus <n>', 'vCPUs (every VM of the template has them)', positiveInt('cpus'), 1)
    .option('--disk <GiB>', "disk size; default: the image's", positiveInt('disk'))
    .addOption(
      durationOption('ready-timeout', `how long --ready may take (at most ${TEMPLATE_READY_TIMEOUT_MAX_MS / 60_000}m)`).default(120_000),
    )
    .option('--host <id>', 'build on this host (its VMs may run on any)')
    .option('--egress <policy>', `${EGRESS_HELP}; while building, and inherited by its VMs`)
    .option('--no-dns', 'with an --egress allow-list: no DNS either')
    .action(cli.lazy(actions, 'create'));
  template.command('ls').description('list templates (and old snapshots kept while VMs use them)').action(cli.lazy(actions, 'ls'));
  template.command('show <name>').description('show a template').action(cli.lazy(actions, 'show'));
  template.command('rm <name>').description('remove a template; its snapshot goes once no VM uses it').action(cli.lazy(actions, 'rm'));
}
