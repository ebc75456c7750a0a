import { Option, type Command } from 'commander';
import { newId } from '@forky/base';
import { printJson, printTable } from '../output.js';
import { APP_HELP, collect, positiveInt, type CliContext } from './context.js';
import { VM_COLUMNS, parsePairs, vmRows } from './vm.js';

interface ForkOptions {
  count: number;
  host?: string;
  spread?: boolean;
  resumeParent?: boolean;
  live?: boolean;
  until: 'ready' | 'running';
  app: string[];
  label: string[];
  env: string[];
}

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
    .action(
      cli.action(async (source: string, o: ForkOptions, cmd: Command) => {
        const live = !!(o.live ?? o.resumeParent);
        const key = newId('fork', 16);
        const labels = parsePairs(o.label, 'label');
        const env = parsePairs(o.env, 'env');
        const r = await cli.withSession(cmd, async (s) => {
          const apps = await s.uploadApps(o.app);
          return s.call('fork', {
            source,
            count: o.count,
            spread: !!o.spread,
            resumeParent: live,
            until: o.until,
            key,
            ...(apps.length ? { apps } : {}),
            ...(o.host ? { host: o.host } : {}),
            ...(o.label.length ? { labels } : {}),
            // Per-child values differ only in a batch file; here every child gets the same env.
            ...(o.env.length ? { perChild: Array.from({ length: o.count }, () => ({ env })) } : {}),
          });
        });
        if (cli.json(cmd)) printJson(r);
        else {
          const pause = r.timings.pauseMs === undefined ? '' : `; parent paused ${r.timings.pauseMs} ms`;
          process.stdout.write(`snapshot ${r.snapshot.id}; ${r.children.length} children in ${r.timings.totalMs} ms${pause}\n`);
          printTable(vmRows(r.children), VM_COLUMNS);
        }
      }),
    );
}
