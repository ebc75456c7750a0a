import type { Command } from 'commander';
import { newId } from '@forky/base';
import { exitCodeOf, runStream, stdinIsPiped, writeOut } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';
import { execFields, type ExecOptions } from '../commands/exec.js';
import { DEFAULT_SHELL } from '../commands/shell.js';

/** `forky vm shell ID [-- CMD…]`. */
export async function shell(cli: CliContext, id: string, argv: string[], o: ExecOptions, cmd: Command): Promise<void> {
  return runPty(cli, cmd, id, argv.length ? argv : DEFAULT_SHELL, execFields(o, 0));
}

const sizeOf = (): { rows: number; cols: number } => ({ rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 });

/**
 * Runs `argv` on a PTY of the terminal's size. Our terminal goes raw, so every key (Ctrl-C too)
 * reaches the guest; it is restored on every way out, a process.exit included.
 */
export async function runPty(cli: CliContext, cmd: Command, id: string, argv: string[], fields: Record<string, unknown>): Promise<void> {
  const tty = process.stdin.isTTY === true;
  const input = tty || stdinIsPiped();
  const env = { TERM: process.env.TERM || 'xterm', ...(fields.env as Record<string, string>) };
  const body = { id, cmd: argv, ...fields, env, stdin: input, detach: false, pty: sizeOf(), key: newId('shell', 16) };
  const r = await cli.withSession(cmd, async (s) => {
    const st = await s.stream('exec.start', body);
    const restore = (): void => {
      if (tty && process.stdin.isRaw) process.stdin.setRawMode(false);
    };
    const onResize = (): void => {
      const z = sizeOf();
      st.resize(z.rows, z.cols);
    };
    // The terminal going away or a kill ends the guest's side too, and we exit the normal way.
    const onHangup = (): void => st.cancel();
    process.on('exit', restore);
    process.stdout.on('resize', onResize);
    process.on('SIGHUP', onHangup);
    process.on('SIGTERM', onHangup);
    try {
      if (tty) process.stdin.setRawMode(true);
      return await runStream(st, input ? process.stdin : undefined, (_kind, bytes) => writeOut(process.stdout, bytes));
    } finally {
      restore();
      process.off('exit', restore);
      process.stdout.off('resize', onResize);
      process.off('SIGHUP', onHangup);
      process.off('SIGTERM', onHangup);
      st.close();
    }
  });
  process.exitCode = exitCodeOf(r.end, r.interrupted);
}
