import type { Command } from 'commander';
import { describeDown, down, status, up } from '../local-cluster.js';
import { printJson, printTable, progress } from '../output.js';
import { positiveInt, type CliContext } from './context.js';

/** `forky up | down | status | hosts`: the local cluster and the hosts of any cluster. */
export function registerCluster(program: Command, cli: CliContext): void {
  program
    .command('up')
    .description('start a local cluster: nats-server, the scheduler, N hostd; build the guest image if missing')
    .option('--hosts <n>', 'number of hosts', positiveInt('hosts'), 1)
    .option('--detach', 'return once every host has reported in (default: stay and stop all on Ctrl-C)')
    .option(
      '--no-auth',
      'no NATS users: anyone who reaches the port may act (default: a user per host, the scheduler and an operator, in <data>/auth)',
    )
    .option('--tls', 'NATS over TLS, with a self-signed certificate in <data>/auth')
    .action(
      cli.action(async (o: { hosts: number; detach?: boolean; auth: boolean; tls?: boolean }, cmd: Command) => {
        const data = cli.dataOf(cmd);
        const cluster = await up({ data, hosts: o.hosts, auth: o.auth, tls: o.tls === true });
        if (cli.json(cmd)) printJson({ server: cluster.server, processes: cluster.processes });
        else {
          process.stdout.write(`cluster up: ${cluster.server} (data ${data})\n`);
          printTable(cluster.processes, ['role', 'pid', 'host']);
        }
        if (o.detach) return;
        progress('running; Ctrl-C stops everything');
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        await down(data);
      }),
    );

  program
    .command('down')
    .description('destroy every VM and snapshot, and stop the local cluster')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const r = await down(cli.dataOf(cmd));
        if (cli.json(cmd)) printJson(r ?? { stopped: [] });
        else process.stdout.write(describeDown(r));
      }),
    );

  program
    .command('status')
    .description('what runs of the local cluster')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const st = await status(cli.dataOf(cmd));
        if (cli.json(cmd)) printJson(st);
        else {
          process.stdout.write(`server: ${st.server ?? '(none)'}\n`);
          printTable(st.processes, ['role', 'pid', 'host']);
        }
      }),
    );

  program
    .command('hosts')
    .description('hosts and their capacity, from their heartbeats')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const { hosts } = await cli.withSession(cmd, (s) => s.call('hosts', {}));
        if (cli.json(cmd)) printJson(hosts);
        else
          printTable(
            hosts.map((h) => ({ ...h, gpus: `${h.gpus.free}/${h.gpus.total}` })),
            ['id', 'alive', 'accel', 'cpus', 'memTotalMiB', 'memFreeMiB', 'gpus', 'vms', 'snapshots', 'lastSeen'],
          );
      }),
    );
}
