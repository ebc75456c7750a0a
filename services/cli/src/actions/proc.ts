import type { Command } from 'commander';
import type { GuestProc as Proc } from '@forky/agent';
import { attach } from '@forky/sdk';
import { printJson, printTable } from '../output.js';
import type { SignalName } from '../sandbox-args.js';
import { guestText } from '../guest-text.js';
import { INTERRUPTED_EXIT, cancelOnInterrupt, noteDropped, writeOut } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';

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

export async function ps(cli: CliContext, id: string, _o: unknown, cmd: Command): Promise<void> {
  const r = await cli.withSession(cmd, (s) => s.call('proc.list', { id }));
  if (cli.json(cmd)) printJson(r.processes);
  else printTable(r.processes.map(procRow), ['pid', 'state', 'detached', 'pty', 'started', 'cmd']);
}

export async function logs(cli: CliContext, id: string, pid: number, o: { follow?: boolean }, cmd: Command): Promise<void> {
  const interrupted = await cli.withSession(cmd, async (s) => {
    const p = await attach(s, id, pid, { follow: !!o.follow, onEvent: noteDropped });
    // Ctrl-C stops the following; the process runs on.
    return cancelOnInterrupt({ cancel: () => p.detach() }, async (stopped) => {
      for await (const c of p) await writeOut(c.stream === 'stderr' ? process.stderr : process.stdout, c.bytes);
      return stopped();
    });
  });
  if (interrupted) process.exitCode = INTERRUPTED_EXIT;
}

export async function kill(cli: CliContext, id: string, pid: number, o: { signal: SignalName }, cmd: Command): Promise<void> {
  await cli.withSession(cmd, (s) => s.call('proc.signal', { id, pid, signal: o.signal }));
  if (cli.json(cmd)) printJson({ pid, signal: o.signal });
}
