import type { Command } from 'commander';
import { positiveInt, type CliContext } from './context.js';

const actions = () => import('../actions/cluster.js');

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
    .action(cli.lazy(actions, 'up'));

  program.command('down').description('destroy every VM and snapshot, and stop the local cluster').action(cli.lazy(actions, 'down'));

  // Its own module: what it needs is a file read, none of the cluster code.
  program
    .command('status')
    .description('what runs of the local cluster')
    .action(cli.lazy(() => import('../actions/status.js'), 'status'));

  program.command('hosts').description('hosts and their capacity, from their heartbeats').action(cli.lazy(actions, 'hosts'));
}
