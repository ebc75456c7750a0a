import type { Command } from 'commander';
import type { CliContext } from '../commands/context.js';
import { describeDown, down as stop, up as start } from '../local-cluster.js';
import { printJson, printTable, progress } from '../output.js';

export async function up(
  cli: CliContext,
  o: { hosts: number; detach?: boolean; auth: boolean; tls?: boolean },
  cmd: Command,
): Promise<void> {
  const data = cli.dataOf(cmd);
  const cluster = await start({ data, hosts: o.hosts, auth: o.auth, tls: o.tls === true });
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
  await stop(data);
}

export async function down(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const r = await stop(cli.dataOf(cmd));
  if (cli.json(cmd)) printJson(r ?? { stopped: [] });
  else process.stdout.write(describeDown(r));
}

export async function hosts(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const r = await cli.withSession(cmd, (s) => s.call('hosts', {}));
  if (cli.json(cmd)) printJson(r.hosts);
  else
    printTable(
      r.hosts.map((h) => ({ ...h, gpus: `${h.gpus.free}/${h.gpus.total}` })),
      ['id', 'alive', 'accel', 'cpus', 'memTotalMiB', 'memFreeMiB', 'gpus', 'vms', 'snapshots', 'lastSeen'],
    );
}
