import { Option, type Command } from 'commander';
import { ForkyError, newId } from '@forky/base';
import { printJson } from '../output.js';
import { collectEnv, timeoutMs } from '../sandbox-args.js';
import { encodeOutput, exitCodeOf, runStream, stdinIsPiped, writeOut } from '../streams-io.js';
import type { CliContext } from './context.js';
import { runPty } from './shell.js';
import { endedWithSession, followAfterHandOver } from '../reattach.js';

/** The most output `--json` holds (it prints it all at the end); past it the command is cancelled and we fail. */
export const JSON_OUTPUT_MAX = 64 * 2 ** 20;

/** The exec's own deadline in the guest when neither --timeout nor --exec-timeout is given (a detached one has none). */
const EXEC_TIMEOUT_MS = 30_000;

export interface ExecOptions {
  env: Record<string, string>;
  cwd?: string;
  user?: string;
  timeout?: number;
  execTimeout?: number;
  detach?: boolean;
  tty?: boolean;
}

/** The fields of an `exec.start` body the options give (the same for a plain exec, a PTY and a shell). */
export function execFields(o: ExecOptions, defaultTimeoutMs: number): Record<string, unknown> {
  return {
    env: o.env,
    ...(o.cwd ? { cwd: o.cwd } : {}),
    ...(o.user ? { user: o.user } : {}),
    timeoutMs: o.timeout ?? o.execTimeout ?? defaultTimeoutMs,
  };
}

/** Adds the options every way of running a command in the guest takes. */
export function execOptions(c: Command, timeoutHelp: string): Command {
  return c
    .addOption(new Option('--env <K=V>', 'an environment variable for the command (repeatable)').argParser(collectEnv).default({}, 'none'))
    .option('--cwd <dir>', 'working directory in the guest')
    .option('--user <u>', 'user name or uid in the guest')
    .option('--timeout <ms>', timeoutHelp, timeoutMs('timeout'))
    .addOption(new Option('--exec-timeout <ms>', 'the same as --timeout').argParser(timeoutMs('exec-timeout')).hideHelp());
}

/** `forky vm exec ID [options] -- CMD…`: the command's output as it comes, its stdin from a pipe, its exit code. */
export function registerExec(vm: Command, cli: CliContext): void {
  execOptions(
    vm
      .command('exec <id> <cmd...>')
      .description('run a command in the guest: forky vm exec ID [options] -- CMD ARGS…; exits with its exit code'),
    `deadline of the command in the guest, 0 for none (default ${EXEC_TIMEOUT_MS}; exit 124 past it)`,
  )
    .option('--detach', 'start it and print its process id; its output stays in the guest (forky vm logs)')
    .option('-t, --tty', 'run it on a pseudo-terminal, as forky vm shell does')
    .action(
      cli.action(async (id: string, argv: string[], o: ExecOptions, cmd: Command) => {
        if (o.tty) return runPty(cli, cmd, id, argv, execFields(o, 0));
        // Keyed, so a retry after a lost reply gets the first run's stream instead of running it again.
        const key = newId('exec', 16);
        if (o.detach) {
          const pid = await cli.withSession(cmd, async (s) => {
            const st = await s.stream('exec.start', { id, cmd: argv, ...execFields(o, 0), stdin: false, detach: true, key });
            st.close();
            return st.pid;
          });
          if (cli.json(cmd)) printJson({ pid });
          else process.stdout.write(`${pid}\n`);
          return;
        }
        const piped = stdinIsPiped();
        const body = { id, cmd: argv, ...execFields(o, EXEC_TIMEOUT_MS), stdin: piped, detach: false, key };
        const json = cli.json(cmd);
        const out = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
        let held = 0;
        let printed = 0;
        const r = await cli.withSession(cmd, async (s) => {
          const st = await s.stream('exec.start', body);
          const onOutput = async (kind: 'stdout' | 'stderr', bytes: Uint8Array): Promise<void> => {
            printed += bytes.length;
            if (!json) return writeOut(kind === 'stderr' ? process.stderr : process.stdout, bytes);
            if ((held += bytes.length) > JSON_OUTPUT_MAX) {
              st.cancel();
              throw new ForkyError(
                'CAPACITY',
                `the command wrote more than ${JSON_OUTPUT_MAX / 2 ** 20} MiB; --json holds no more (it was cancelled): run it without --json to stream its output`,
              );
            }
            out[kind].push(Buffer.from(bytes));
          };
          try {
            const first = await runStream(st, piped ? process.stdin : undefined, onOutput);
            // A snapshot of the VM ended the stream, not the command: follow the command on.
            if (!endedWithSession(first.end) || first.interrupted || !st.pid) return first;
            return await followAfterHandOver(s, id, st.pid, printed, onOutput);
          } finally {
            st.close();
          }
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
      }),
    );
}
