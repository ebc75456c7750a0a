import { Command } from 'commander';
import { CliContext, positiveInt, type CliDeps } from './commands/context.js';
import { parseLate } from './commands/late-args.js';
import { registerCluster } from './commands/cluster.js';
import { registerImage } from './commands/image.js';
import { registerVm } from './commands/vm.js';
import { registerSnapshot } from './commands/snapshot.js';
import { registerFork } from './commands/fork.js';
import { registerBatch } from './commands/batch.js';
import { registerReq } from './commands/req.js';
import { registerExec } from './commands/exec.js';
import { registerProc } from './commands/proc.js';
import { registerShell } from './commands/shell.js';
import { registerWatch } from './commands/watch.js';
import { registerCp } from './commands/cp.js';
import { registerPort } from './commands/port.js';
import { registerNet } from './commands/net.js';
import { registerTemplate } from './commands/template.js';
import { registerEvents } from './commands/events.js';

// The session (NATS, the SDK, the contract) is loaded by the first command that asks for one.
const DEFAULT_DEPS: CliDeps = {
  openSession: async (o) => (await import('./session.js')).openSession(o),
  exit: (code) => process.exit(code),
};

/**
 * The `forky` program with every command; `deps` replaces the cluster and the process exit (tests).
 * Defining the commands loads commander and the command tables only: each action imports its
 * module when it runs, so `--help`, `--version`, a usage error and `status` load no zod and no NATS.
 */
export function buildProgram(deps: Partial<CliDeps> = {}): Command {
  const cli = new CliContext({ ...DEFAULT_DEPS, ...deps });
  const program = new Command('forky')
    .description('Forky Pig: fork virtual machines like processes')
    .version('0.1.0')
    .option('--server <url>', 'NATS server of the cluster (also FORKY_SERVER; default: the one `forky up` started)')
    .option('--data <dir>', 'data directory of `forky up` (also FORKY_DATA)', undefined)
    .option('--json', 'print one JSON document on stdout')
    .option('--request-timeout <ms>', 'deadline of one request attempt', positiveInt('request-timeout'), 600_000)
    .showHelpAfterError()
    // Usage errors (bad option values, missing arguments) exit 2, like other bad input.
    .exitOverride((err) => cli.deps.exit(err.exitCode === 0 ? 0 : 2))
    // Options whose parser needs the contract are parsed here, once the command is known.
    .hook('preAction', (_program, action) => parseLate(action));
  registerCluster(program, cli);
  registerImage(program, cli);
  const vm = registerVm(program, cli);
  registerExec(vm, cli);
  registerProc(vm, cli);
  registerShell(vm, cli);
  registerWatch(vm, cli);
  registerNet(vm, cli);
  registerCp(program, cli);
  registerPort(program, cli);
  registerSnapshot(program, cli);
  registerTemplate(program, cli);
  registerFork(program, cli);
  registerBatch(program, cli);
  registerReq(program, cli);
  registerEvents(program, cli);
  return program;
}
