import type { Command } from 'commander';
import { printJson, printTable } from '../output.js';
import { parsePid, parseSignal, type SignalName } from '../sandbox-args.js';
import { guestText } from '../guest-text.js';
import { INTERRUPTED_EXIT, cancelOnInterrupt, consume, endError, noteDropped, writeOut } from '../streams-io.js';
import type { CliContext } from './context.js';

interface Proc {
  pid: number;
  cmd: string[];
  detached: boolean;
  pty: boolean;
  running: boolean;
  exitCode: number | null;
  startedAtMs: number;
}

/** A process as a table row: the state says running or how it ended; the command is escaped (the guest may name it anything). */
export function procRow(p: Proc): Record<'pid' | 'state' | 'detached' | 'pty' | 'started' | 'cmd', string | number> {
  return {
    pid: p.pid,
    state: p.running ? 'running' : `exited ${guestText(p.exitCode ?? '?')}`,
    detached: p.detached ? 'yes' : 'no',
    pty: p.pty ? 'yes' : 'no',
    started: new Date(p.startedAtMs).toISOString(),
    cmd: (Array.isArray(p.cmd) ? p.cmd : [p.cmd]).map(guestText).join(' '),
  };
}

/** `forky vm ps | logs | kill`: the processes the guest agent started. */
export function registerProc(vm: Command, cli: CliContext): void {
  vm.command('ps <id>')
    .description('list the processes forky started in the guest (running, and the last ones that exited)')
    .action(
      cli.action(async (id: string, _o: unknown, cmd: Command) => {
        const r = await cli.withSession(cmd, (s) => s.call('proc.list', { id }));
        if (cli.json(cmd)) printJson(r.processes);
        else printTable(r.processes.map(procRow), ['pid', 'state', 'detached', 'pty', 'started', 'cmd']);
      }),
    );

  vm.command('logs')
    .argument('<id>')
    .argument('<pid>', 'process id (forky vm ps)', parsePid)
    .description("a process's output: what the guest kept of it (its last 1 MiB), then with --follow what comes until it exits")
    .option('-f, --follow', 'keep printing new output until the process exits (or Ctrl-C)')
    .action(
      cli.action(async (id: string, pid: number, o: { follow?: boolean }, cmd: Command) => {
        const r = await cli.withSession(cmd, async (s) => {
          const st = await s.stream('proc.attach', { id, pid, follow: !!o.follow });
          try {
            return await cancelOnInterrupt(st, async (interrupted) => {
              const end = await consume(
                st,
                (kind, bytes) => writeOut(kind === 'stderr' ? process.stderr : process.stdout, bytes),
                noteDropped,
              );
              return { end, interrupted: interrupted() };
            });
          } finally {
            st.close();
          }
        });
        if (!r.end.ok) throw endError(r.end);
        if (r.interrupted) process.exitCode = INTERRUPTED_EXIT;
      }),
    );

  vm.command('kill')
    .argument('<id>')
    .argument('<pid>', 'process id (forky vm ps)', parsePid)
    .description('send a signal to a process in the guest')
    .option('-s, --signal <sig>', 'TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP or CONT (a name or its number)', parseSignal, 'TERM')
    .action(
      cli.action(async (id: string, pid: number, o: { signal: SignalName }, cmd: Command) => {
        await cli.withSession(cmd, (s) => s.call('proc.signal', { id, pid, signal: o.signal }));
        if (cli.json(cmd)) printJson({ pid, signal: o.signal });
      }),
    );
}
