import type { Command } from 'commander';
import { ForkyError, newId } from '@forky/base';
import type { TemplateCreateRequest, TemplateInfo } from '@forky/contract';
import { printJson, printTable, progress } from '../output.js';
import type { Session } from '../session.js';
import type { CliContext } from '../commands/context.js';
import { parseEgress } from './net.js';

const COLUMNS = ['name', 'image', 'memMiB', 'cpus', 'snapshot', 'host', 'createdAt'] as const satisfies ReadonlyArray<keyof TemplateInfo>;

/** A make takes as long as its steps: each attempt of the request may wait this long for it. */
const CREATE_ATTEMPT_MS = 30 * 60_000;

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

export async function create(cli: CliContext, name: string, o: CreateOptions, cmd: Command): Promise<void> {
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
}

export async function ls(cli: CliContext, _o: unknown, cmd: Command): Promise<void> {
  const r = await cli.withSession(cmd, (s) => s.call('template.list', {}));
  if (cli.json(cmd)) printJson(r);
  else {
    printTable(r.templates, COLUMNS);
    if (r.retired.length > 0) process.stdout.write(`retired, in use: ${r.retired.map((x) => `${x.snapshot} (${x.name})`).join(', ')}\n`);
  }
}

export async function show(cli: CliContext, name: string, _o: unknown, cmd: Command): Promise<void> {
  const t = await cli.withSession(cmd, (s) => s.call('template.show', { name }));
  if (cli.json(cmd)) printJson(t);
  else printTable([t], COLUMNS);
}

export async function rm(cli: CliContext, name: string, _o: unknown, cmd: Command): Promise<void> {
  // No key in this request's contract: sent once.
  const r = await cli.withSession(cmd, (s) => s.call('template.delete', { name }));
  if (cli.json(cmd)) printJson(r);
  else process.stdout.write(`removed ${r.name}; snapshot ${r.snapshot} ${r.deleted ? 'deleted' : 'kept until its VMs are gone'}\n`);
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
