import { InvalidArgumentError, type Command } from 'commander';
import { ForkyError, newId } from '@forky/base';
import { TEMPLATE_READY_TIMEOUT_MAX_MS, type TemplateCreateRequest, type TemplateInfo } from '@forky/contract';
import { printJson, printTable, progress } from '../output.js';
import type { Session } from '../session.js';
import { collect, positiveInt, type CliContext } from './context.js';
import { EGRESS_HELP, parseEgress } from './net.js';

const COLUMNS = ['name', 'image', 'memMiB', 'cpus', 'snapshot', 'host', 'createdAt'] as const satisfies ReadonlyArray<keyof TemplateInfo>;

/** A make takes as long as its steps: each attempt of the request may wait this long for it. */
const CREATE_ATTEMPT_MS = 30 * 60_000;

/** `90s`, `2m`, `1h`, `1500ms`; a bare number is milliseconds. */
export function parseDuration(field: string) {
  return (v: string): number => {
    const m = /^(\d+)(ms|s|m|h)?$/.exec(v.trim());
    if (!m) throw new InvalidArgumentError(`--${field} must be a duration like 90s, 2m or 1500ms`);
    return Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(m[2] ?? 'ms') as 'ms'];
  };
}

interface CreateOptions {
  image: string;
  run: string[];
  ready?: string;
  mem: number;
  cpus: number;
  disk?: number;
  readyTimeout: number;
  host?: string;
  egress?: string;
  dns: boolean;
}

const RUN_HELP =
  "a shell step run as /bin/sh -c STEP, in order (repeatable); a process it leaves running is in the template's VMs: " +
  'redirect its output and detach it, e.g. \'setsid sh -c "python3 -m http.server 8000" >/dev/null 2>&1 &\' ' +
  '(output left open holds the step until its timeout, which kills its process group)';

/** `forky template create | ls | show | rm`. */
export function registerTemplate(program: Command, cli: CliContext): void {
  const template = program.command('template').description("templates: a set-up VM's snapshot under a name; `vm boot --template` forks it");
  template
    .command('create <name>')
    .description('boot an image, run the steps, wait for --ready to succeed, and keep the snapshot as NAME (replacing an older one)')
    .option('--image <name>', 'image', 'tiny')
    .option('--run <cmd>', RUN_HELP, collect, [])
    .option('--ready <cmd>', 'polled after the steps until it exits 0; then the VM is frozen')
    .option('--mem <MiB>', 'memory (every VM of the template has it)', positiveInt('mem'), 256)
    .option('--cpus <n>', 'vCPUs (every VM of the template has them)', positiveInt('cpus'), 1)
    .option('--disk <GiB>', "disk size; default: the image's", positiveInt('disk'))
    .option(
      '--ready-timeout <duration>',
      `how long --ready may take (at most ${TEMPLATE_READY_TIMEOUT_MAX_MS / 60_000}m)`,
      parseDuration('ready-timeout'),
      120_000,
    )
    .option('--host <id>', 'build on this host (its VMs may run on any)')
    .option('--egress <policy>', `${EGRESS_HELP}; while building, and inherited by its VMs`)
    .option('--no-dns', 'with an --egress allow-list: no DNS either')
    .action(
      cli.action(async (name: string, o: CreateOptions, cmd: Command) => {
        const req: TemplateCreateRequest = {
          name,
          image: o.image,
          memMiB: o.mem,
          cpus: o.cpus,
          run: o.run,
          readyTimeoutMs: o.readyTimeout,
          stepTimeoutMs: 600_000,
          key: newId('tpl', 16),
          ...(o.ready ? { ready: o.ready } : {}),
          ...(o.disk ? { diskGiB: o.disk } : {}),
          ...(o.host ? { host: o.host } : {}),
          ...(o.egress === undefined ? {} : { network: { egress: parseEgress(o.egress, o.dns) } }),
        };
        progress(`making template ${name}: booting ${o.image}, ${o.run.length} step(s)${o.ready ? ', then waiting for --ready' : ''}…`);
        const g = cli.globals(cmd);
        const s = await cli.deps.openSession({
          server: g.server,
          data: cli.dataOf(cmd),
          requestTimeoutMs: Math.max(g.requestTimeout, CREATE_ATTEMPT_MS),
        });
        try {
          const t = await createAsking(s, req, Date.now() + CREATE_ATTEMPT_MS + o.readyTimeout + o.run.length * 600_000);
          if (cli.json(cmd)) printJson(t);
          else {
            process.stdout.write(`template ${t.name}: snapshot ${t.snapshot} in ${t.timings?.totalMs ?? '?'} ms\n`);
            printTable([t], COLUMNS);
          }
        } finally {
          await s.close();
        }
      }),
    );
  template
    .command('ls')
    .description('list templates (and old snapshots kept while VMs use them)')
    .action(
      cli.action(async (_o: unknown, cmd: Command) => {
        const r = await cli.withSession(cmd, (s) => s.call('template.list', {}));
        if (cli.json(cmd)) printJson(r);
        else {
          printTable(r.templates, COLUMNS);
          if (r.retired.length > 0)
            process.stdout.write(`retired, in use: ${r.retired.map((x) => `${x.snapshot} (${x.name})`).join(', ')}\n`);
        }
      }),
    );
  template
    .command('show <name>')
    .description('show a template')
    .action(
      cli.action(async (name: string, _o: unknown, cmd: Command) => {
        const t = await cli.withSession(cmd, (s) => s.call('template.show', { name }));
        if (cli.json(cmd)) printJson(t);
        else printTable([t], COLUMNS);
      }),
    );
  template
    .command('rm <name>')
    .description('remove a template; its snapshot goes once no VM uses it')
    .action(
      cli.action(async (name: string, _o: unknown, cmd: Command) => {
        // No key in this request's contract: sent once.
        const r = await cli.withSession(cmd, (s) => s.call('template.delete', { name }));
        if (cli.json(cmd)) printJson(r);
        else process.stdout.write(`removed ${r.name}; snapshot ${r.snapshot} ${r.deleted ? 'deleted' : 'kept until its VMs are gone'}\n`);
      }),
    );
}

/**
 * A scheduler waits a bounded time for a job's outcome and then answers TIMEOUT; the job runs on.
 * Asking again under the same key waits for the same job, until `deadline`.
 */
async function createAsking(s: Session, req: TemplateCreateRequest, deadline: number): Promise<TemplateInfo> {
  for (;;) {
    try {
      return await s.call('template.create', req);
    } catch (e) {
      if (!(e instanceof ForkyError && e.code === 'TIMEOUT' && /^request /.test(e.message)) || Date.now() > deadline) throw e;
      progress(`template ${req.name}: still being made; waiting again (key ${req.key})`);
    }
  }
}
