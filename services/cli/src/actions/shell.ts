import type { Command } from 'commander';
import { newId } from '@forky/base';
import { spawn } from '@forky/sdk';
import { exitCodeOf, runProcess, stdinIsPiped, writeOut } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';
import { execFields, type ExecOptions } from '../commands/exec.js';
import { DEFAULT_SHELL } from '../commands/shell.js';

/** `forky vm shell ID [-- CMD…]`. */
export async function shell(cli: CliContext, id: string, argv: string[], o: ExecOptions, cmd: Command): Promise<void> {
  return runPty(cli, cmd, id, argv.length ? argv : DEFAULT_SHELL, execFields(o, 0));
}

/** The terminal's size, within what a guest PTY takes (1–1000 each way). */
const sizeOf = (): { rows: number; cols: number } => ({
  rows: Math.min(process.stdout.rows || 24, 1000),
  cols: Math.min(process.stdout.columns || 80, 1000),
});

/**
 * Runs `argv` on a PTY of the terminal's size, as an SDK process (followed across a snapshot of
 * its VM). Our terminal goes raw, so every key (Ctrl-C too) reaches the guest; it is restored on
 * every way out, a process.exit included.
 */
export async function runPty(
  cli: CliContext,
  cmd: Command,
  id: string,
  argv: string[],
  fields: ReturnType<typeof execFields>,
): Promise<void> {
  const tty = process.stdin.isTTY === true;
  const input = tty || stdinIsPiped();
  const env = { TERM: process.env.TERM || 'xterm', ...fields.env };
  const r = await cli.withSession(cmd, async (s) => {
    const p = await spawn(s, id, argv, { ...fields, env, stdin: input, pty: sizeOf(), key: newId('shell', 16) });
    const restore = (): void => {
      if (tty && process.stdin.isRaw) process.stdin.setRawMode(false);
    };
    // After a snapshot's hand-over the PTY keeps its size (the SDK says so by false): nothing to do.
    const onResize = (): void => {
      const z = sizeOf();
      p.resize(z.rows, z.cols);
    };
    // The terminal going away or a kill ends the guest's side too, and we exit the normal way.
    const onHangup = (): void => p.kill();
    process.on('exit', restore);
    process.stdout.on('resize', onResize);
    process.on('SIGHUP', onHangup);
    process.on('SIGTERM', onHangup);
    try {
      if (tty) process.stdin.setRawMode(true);
      return await runProcess(p, input ? process.stdin : undefined, (_kind, bytes) => writeOut(process.stdout, bytes));
    } finally {
      restore();
      process.off('exit', restore);
      process.stdout.off('resize', onResize);
      process.off('SIGHUP', onHangup);
      process.off('SIGTERM', onHangup);
    }
  });
  process.exitCode = exitCodeOf(r.end, r.interrupted);
}
