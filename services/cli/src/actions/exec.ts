import type { Command } from 'commander';
import { ForkyError, newId } from '@forky/base';
import { spawn, startDetached } from '@forky/sdk';
import { printJson } from '../output.js';
import { encodeOutput, exitCodeOf, runProcess, stdinIsPiped, writeOut } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';
import { EXEC_TIMEOUT_MS, execFields, type ExecOptions } from '../commands/exec.js';
import { runPty } from './shell.js';

/** The most output `--json` holds (it prints it all at the end); past it the command is cancelled and we fail. */
export const JSON_OUTPUT_MAX = 64 * 2 ** 20;

/** `forky vm exec ID [options] -- CMD…`: the command's output as it comes, its stdin from a pipe, its exit code. */
export async function exec(cli: CliContext, id: string, argv: string[], o: ExecOptions, cmd: Command): Promise<void> {
  if (o.tty) return runPty(cli, cmd, id, argv, execFields(o, 0));
  // Keyed, so a retry after a lost reply gets the first run's stream instead of running it again.
  const key = newId('exec', 16);
  if (o.detach) {
    const pid = await cli.withSession(cmd, (s) => startDetached(s, id, argv, { ...execFields(o, 0), key }));
    if (cli.json(cmd)) printJson({ pid });
    else process.stdout.write(`${pid}\n`);
    return;
  }
  const piped = stdinIsPiped();
  const json = cli.json(cmd);
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  let held = 0;
  const r = await cli.withSession(cmd, async (s) => {
    // The SDK's process follows the command across a snapshot of its VM, printing nothing twice.
    const p = await spawn(s, id, argv, { ...execFields(o, EXEC_TIMEOUT_MS), stdin: piped, key });
    const onOutput = async (kind: 'stdout' | 'stderr', bytes: Uint8Array): Promise<void> => {
      if (!json) return writeOut(kind === 'stderr' ? process.stderr : process.stdout, bytes);
      if ((held += bytes.length) > JSON_OUTPUT_MAX) {
        p.kill();
        throw new ForkyError(
          'CAPACITY',
          `the command wrote more than ${JSON_OUTPUT_MAX / 2 ** 20} MiB; --json holds no more (it was cancelled): run it without --json to stream its output`,
        );
      }
      out[kind].push(Buffer.from(bytes));
    };
    const ran = await runProcess(p, piped ? process.stdin : undefined, onOutput);
    if (p.lostBytes > 0) process.stderr.write(`forky: ${p.lostBytes} bytes of output were lost while the VM was handed over\n`);
    return ran;
  });
  const code = exitCodeOf(r.end, r.interrupted);
  if (r.end.ok && r.end.timedOut)
    process.stderr.write(
      `forky: TIMEOUT: the command ran past its ${o.timeout ?? o.execTimeout ?? EXEC_TIMEOUT_MS} ms deadline and was killed\n`,
    );
  if (json)
    printJson({
      exitCode: code,
      ...encodeOutput('stdout', Buffer.concat(out.stdout)),
      ...encodeOutput('stderr', Buffer.concat(out.stderr)),
    });
  process.exitCode = code;
}
