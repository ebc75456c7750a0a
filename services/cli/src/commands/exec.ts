import { Option, type Command } from 'commander';
import { collectEnv, timeoutMs } from '../sandbox-args.js';
import type { SpawnOptions } from '@forky/sdk';
import type { CliContext } from './context.js';

/** The exec's own deadline in the guest when neither --timeout nor --exec-timeout is given (a detached one has none). */
export const EXEC_TIMEOUT_MS = 30_000;

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
export function execFields(o: ExecOptions, defaultTimeoutMs: number): Pick<SpawnOptions, 'env' | 'cwd' | 'user' | 'timeoutMs'> {
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
    .action(cli.lazy(() => import('../actions/exec.js'), 'exec'));
}
