import type { Command } from 'commander';
import type { CliContext } from '../commands/context.js';
import { status as read } from '../local-status.js';
import { printJson, printTable } from '../output.js';

/** `forky status`: a file read and a signal 0 per process; no module of the cluster code, no request. */
export async function status(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const st = await read(cli.dataOf(cmd));
  if (cli.json(cmd)) printJson(st);
  else {
    process.stdout.write(`server: ${st.server ?? '(none)'}\n`);
    printTable(st.processes, ['role', 'pid', 'host']);
  }
}
