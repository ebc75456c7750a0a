#!/usr/bin/env node
import fs from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ForkyError, ValidationError, delay, newId } from '@forky/base';
import { SchedulerClient } from '@forky/bus';
import { BatchRequest, parseOrThrow, type SchedEndpoint, type SchedReplyOf, type SchedRequestOf, type VmInfo } from '@forky/contract';
import type { NatsConnection } from '@nats-io/nats-core';
import { connectTo, describeDown, down, resolveConnection, status, up } from './cluster.js';
import { rawRequest } from './req.js';
import { uploadApps } from './apps.js';
import { fail, printJson, printTable, progress } from './output.js';
import { renderTree } from './tree.js';
import { IMAGE_RECIPES, dataDirOf } from './paths.js';

interface Globals {
  server?: string;
  data?: string;
  json?: boolean;
  timeout: string;
}

const program = new Command('forky')
  .description('Forky Pig: fork virtual machines like processes')
  .version('0.1.0')
  .option('--server <url>', 'NATS server of the cluster (also FORKY_SERVER; default: the one `forky up` started)')
  .option('--data <dir>', 'data directory of `forky up` (also FORKY_DATA)', undefined)
  .option('--json', 'print one JSON document on stdout')
  .option('--timeout <ms>', 'deadline of one request attempt', '600000')
  .showHelpAfterError()
  // Usage errors (bad option values, missing arguments) exit 2, like other bad input.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

const globals = (cmd: Command): Globals => cmd.optsWithGlobals<Globals>();
const dataOf = (cmd: Command): string => dataDirOf(globals(cmd).data);

/**
 * Runs `fn` with a scheduler client. A request that finds no scheduler or gets no answer is sent
 * again under the same idempotency key, so a scheduler dying mid-request costs a retry, not a VM.
 */
async function withScheduler<T>(
  cmd: Command,
  fn: (call: <E extends SchedEndpoint>(e: E, body: SchedRequestOf<E>) => Promise<SchedReplyOf<E>>, nc: NatsConnection) => Promise<T>,
): Promise<T> {
  const g = globals(cmd);
  const nc = await connectTo(await resolveConnection(g.server, dataOf(cmd)));
  const client = new SchedulerClient(nc, { timeoutMs: Number(g.timeout) });
  const call = async <E extends SchedEndpoint>(e: E, body: SchedRequestOf<E>): Promise<SchedReplyOf<E>> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await client.call(e, body);
      } catch (err) {
        const retry = err instanceof ForkyError && (err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT') && attempt < 4;
        if (!retry) throw err;
        // A warning, not progress: shown on stderr even when it is not a terminal.
        process.stderr.write(`forky: ${e}: ${err.message}; retrying with the same idempotency key (${attempt}/3)\n`);
        await delay(250 * attempt);
      }
    }
  };
  try {
    return await fn(call, nc);
  } finally {
    await nc.close();
  }
}

function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return (...args: A) => fn(...args).catch(fail);
}

const vmColumns = ['id', 'host', 'state', 'image', 'memMiB', 'parentSnapshot', 'pid'];
const printVms = (cmd: Command, vms: VmInfo[], one = false): void =>
  globals(cmd).json ? printJson(one ? vms[0] : vms) : printTable(vms as unknown as Array<Record<string, unknown>>, vmColumns);
const positiveInt = (field: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--${field} must be a positive whole number`);
  return n;
};
const collect = (v: string, acc: string[]): string[] => [...acc, v];
const APP_HELP = 'a host directory the guest sees at /mnt (default /app), read-only underneath, writable per VM (repeatable)';
const nonNegativeInt = (field: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--${field} must be a whole number, 0 or more`);
  return n;
};

// ---- cluster

program
  .command('up')
  .description('start a local cluster: nats-server, the scheduler, N hostd; build the guest image if missing')
  .option('--hosts <n>', 'number of hosts', positiveInt('hosts'), 1)
  .option('--detach', 'return once every host has reported in (default: stay and stop all on Ctrl-C)')
  .option('--no-auth', 'no NATS users: anyone who reaches the port may act (default: a user per host, the scheduler and an operator, in <data>/auth)')
  .option('--tls', 'NATS over TLS, with a self-signed certificate in <data>/auth')
  .action(
    action(async (o: { hosts: number; detach?: boolean; auth: boolean; tls?: boolean }, cmd: Command) => {
      const data = dataOf(cmd);
      const cluster = await up({ data, hosts: o.hosts, auth: o.auth, tls: o.tls === true });
      const st = { server: cluster.server, processes: cluster.processes };
      if (globals(cmd).json) printJson(st);
      else {
        process.stdout.write(`cluster up: ${cluster.server} (data ${data})\n`);
        printTable(cluster.processes as unknown as Array<Record<string, unknown>>, ['role', 'pid', 'host']);
      }
      if (o.detach) return;
      progress('running; Ctrl-C stops everything');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await down(data);
    }),
  );

program
  .command('down')
  .description('destroy every VM and snapshot, and stop the local cluster')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const r = await down(dataOf(cmd));
      if (globals(cmd).json) printJson(r ?? { stopped: [] });
      else process.stdout.write(describeDown(r));
    }),
  );

program
  .command('status')
  .description('what runs of the local cluster')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const st = await status(dataOf(cmd));
      if (globals(cmd).json) printJson(st);
      else {
        process.stdout.write(`server: ${st.server ?? '(none)'}\n`);
        printTable(st.processes as unknown as Array<Record<string, unknown>>, ['role', 'pid', 'host']);
      }
    }),
  );

program
  .command('hosts')
  .description('hosts and their capacity, from their heartbeats')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const { hosts } = await withScheduler(cmd, (call) => call('hosts', {}));
      if (globals(cmd).json) printJson(hosts);
      else printTable(
          hosts.map((h) => ({ ...h, gpus: `${h.gpus.free}/${h.gpus.total}` })),
          ['id', 'alive', 'accel', 'cpus', 'memTotalMiB', 'memFreeMiB', 'gpus', 'vms', 'snapshots', 'lastSeen'],
        );
    }),
  );

// ---- images

const image = program.command('image').description('guest images');
image
  .command('ls')
  .description('images built in the data directory')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const dir = path.join(dataOf(cmd), 'images');
      const rows = [];
      for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
        const m = await fs.readFile(path.join(dir, name, 'manifest.json'), 'utf8').then((t) => JSON.parse(t) as { id: string; kernelVersion: string }, () => undefined);
        if (m) rows.push({ name, id: m.id, kernel: m.kernelVersion });
      }
      if (globals(cmd).json) printJson(rows);
      else printTable(rows, ['name', 'id', 'kernel']);
    }),
  );
image
  .command('build [name]')
  .description('build an image from its recipe in images/ (skipped when up to date)')
  .action(
    action(async (name: string | undefined, _o: unknown, cmd: Command) => {
      const n = name ?? 'tiny';
      if (!/^[a-z0-9][a-z0-9_-]*$/.test(n)) throw new ValidationError(`invalid image name ${JSON.stringify(n)}`, { field: 'name' });
      const recipe = path.join(IMAGE_RECIPES, n, 'build.sh');
      await fs.access(recipe).catch(() => {
        throw new ForkyError('NOT_FOUND', `no recipe for image ${n} (${recipe})`);
      });
      const out = path.join(dataOf(cmd), 'images');
      await promisify(execFile)('bash', [recipe, out], { env: { ...process.env, ...(process.stderr.isTTY ? {} : { FORKY_QUIET: '1' }) }, maxBuffer: 16 << 20 });
      const m = JSON.parse(await fs.readFile(path.join(out, n, 'manifest.json'), 'utf8')) as { id: string };
      if (globals(cmd).json) printJson({ name: n, id: m.id });
      else process.stdout.write(`${n} ${m.id}\n`);
    }),
  );

// ---- VMs

const vm = program.command('vm').description('virtual machines');
vm.command('boot')
  .description('boot a VM; returns once its guest agent answers')
  .option('--image <name>', 'image', 'tiny')
  .option('--mem <MiB>', 'memory', positiveInt('mem'), 256)
  .option('--cpus <n>', 'vCPUs', positiveInt('cpus'), 1)
  .option('--gpus <n>', 'host GPUs passed through (VFIO); such a VM cannot be snapshotted or forked', nonNegativeInt('gpus'), 0)
  .option('--app <dir[:/mnt]>', APP_HELP, collect, [])
  .option('--host <id>', 'pin to a host')
  .action(
    action(async (o: { image: string; mem: number; cpus: number; gpus: number; app: string[]; host?: string }, cmd: Command) => {
      const key = newId('boot', 16);
      const v = await withScheduler(cmd, async (call, nc) => {
        const apps = await uploadApps(nc, o.app);
        return call('vm.boot', { image: o.image, memMiB: o.mem, cpus: o.cpus, key, ...(o.gpus ? { gpus: o.gpus } : {}), ...(apps.length ? { apps } : {}), ...(o.host ? { host: o.host } : {}) });
      });
      printVms(cmd, [v], true);
    }),
  );
vm.command('ls')
  .description('list VMs on every host')
  .action(action(async (_o: unknown, cmd: Command) => printVms(cmd, (await withScheduler(cmd, (call) => call('vm.list', {}))).vms)));
for (const [name, endpoint, what] of [
  ['show', 'vm.show', 'show a VM'],
  ['pause', 'vm.pause', 'pause a VM'],
  ['resume', 'vm.resume', 'resume a paused VM'],
] as const) {
  vm.command(`${name} <id>`)
    .description(what)
    .action(action(async (id: string, _o: unknown, cmd: Command) => printVms(cmd, [await withScheduler(cmd, (call) => call(endpoint, { id }))], true)));
}
vm.command('rm <ids...>')
  .description('destroy VMs: their processes and files are gone')
  .action(
    action(async (ids: string[], _o: unknown, cmd: Command) => {
      const gone = await withScheduler(cmd, async (call) => {
        const out: VmInfo[] = [];
        for (const id of ids) out.push(await call('vm.destroy', { id }));
        return out;
      });
      printVms(cmd, gone);
    }),
  );
vm.command('app <id>')
  .description('mount host directories in a running VM: a new mount point, or a changed directory as a new layer in place of the old')
  .requiredOption('--app <dir[:/mnt]>', APP_HELP, collect, [])
  .action(
    action(async (id: string, o: { app: string[] }, cmd: Command) => {
      const v = await withScheduler(cmd, async (call, nc) => call('vm.app', { id, apps: await uploadApps(nc, o.app), key: newId('app', 16) }));
      printVms(cmd, [v], true);
    }),
  );
vm.command('exec <id> <cmd...>')
  .description('run a command in the guest: forky vm exec ID -- CMD ARGS…; exits with its exit code')
  .addOption(new Option('--exec-timeout <ms>', 'deadline of the command in the guest').default('30000'))
  .action(
    action(async (id: string, argv: string[], o: { execTimeout: string }, cmd: Command) => {
      const r = await withScheduler(cmd, (call) => call('vm.exec', { id, cmd: argv, timeoutMs: Number(o.execTimeout) }));
      if (globals(cmd).json) printJson(r);
      else {
        process.stdout.write(r.stdout);
        process.stderr.write(r.stderr);
      }
      process.exitCode = r.exitCode;
    }),
  );

// ---- snapshots and forks

const snapshot = program.command('snapshot').description('snapshots');
snapshot
  .command('create <vm>')
  .description('freeze a VM into a snapshot (the VM is resumed after, unless --paused)')
  .option('--paused', 'leave the VM paused')
  .action(
    action(async (vmId: string, o: { paused?: boolean }, cmd: Command) => {
      const s = await withScheduler(cmd, (call) => call('snapshot.create', { vm: vmId, resume: !o.paused, key: newId('snap', 16) }));
      if (globals(cmd).json) printJson(s);
      else printTable([s as unknown as Record<string, unknown>], ['id', 'host', 'vm', 'parentSnapshot', 'createdAt']);
    }),
  );
snapshot
  .command('ls')
  .description('list snapshots on every host')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const { snapshots } = await withScheduler(cmd, (call) => call('snapshot.list', {}));
      if (globals(cmd).json) printJson(snapshots);
      else printTable(snapshots as unknown as Array<Record<string, unknown>>, ['id', 'host', 'vm', 'parentSnapshot', 'image', 'createdAt']);
    }),
  );
snapshot
  .command('tree')
  .description('the lineage of every snapshot: image -> snapshot -> ... as recorded in JetStream')
  .action(
    action(async (_o: unknown, cmd: Command) => {
      const tree = await withScheduler(cmd, (call) => call('snapshot.tree', {}));
      if (globals(cmd).json) printJson(tree);
      else process.stdout.write(renderTree(tree.nodes));
    }),
  );
snapshot
  .command('rm <id>')
  .description('delete a snapshot; refused while VMs or snapshots depend on it, unless --cascade')
  .option('--cascade', 'also destroy the VMs and snapshots that depend on it')
  .action(
    action(async (id: string, o: { cascade?: boolean }, cmd: Command) => {
      const r = await withScheduler(cmd, (call) => call('snapshot.delete', { id, cascade: !!o.cascade }));
      if (globals(cmd).json) printJson(r);
      else process.stdout.write(`deleted ${r.snapshots.join(', ')}${r.vms.length > 0 ? `; destroyed ${r.vms.join(', ')}` : ''}\n`);
    }),
  );

program
  .command('fork <source>')
  .description('fork a VM or a snapshot into N children, each resuming its state')
  .requiredOption('--count <n>', 'children', positiveInt('count'))
  .option('--host <id>', 'pin to a host')
  .option('--spread', 'spread the children over every live host (the snapshot travels through the object store)')
  .option('--live', 'when forking a VM, keep it running (it stops only for the pause hostd reports)')
  .option('--resume-parent', 'the same as --live')
  .addOption(new Option('--until <when>', 'return once children are ready (agent answers, identity set) or running (vCPUs run; the rest follows)').choices(['ready', 'running']).default('ready'))
  .option('--app <dir[:/mnt]>', `${APP_HELP}; every child mounts it`, collect, [])
  .action(
    action(async (source: string, o: { count: number; host?: string; spread?: boolean; resumeParent?: boolean; live?: boolean; until: 'ready' | 'running'; app: string[] }, cmd: Command) => {
      const live = !!(o.live ?? o.resumeParent);
      const r = await withScheduler(cmd, async (call, nc) => {
        const apps = await uploadApps(nc, o.app);
        return call('fork', { source, count: o.count, spread: !!o.spread, resumeParent: live, until: o.until, key: newId('fork', 16), ...(apps.length ? { apps } : {}), ...(o.host ? { host: o.host } : {}) });
      });
      if (globals(cmd).json) printJson(r);
      else {
        const pause = r.timings.pauseMs === undefined ? '' : `; parent paused ${r.timings.pauseMs} ms`;
        process.stdout.write(`snapshot ${r.snapshot.id}; ${r.children.length} children in ${r.timings.totalMs} ms${pause}\n`);
        printTable(r.children as unknown as Array<Record<string, unknown>>, vmColumns);
      }
    }),
  );

const batch = program.command('batch').description('fork batches');
batch
  .command('submit <file>')
  .description('submit a JSON file of fork requests ([{source, count, host?}, …] or {items: […]}); reports each child')
  .action(
    action(async (file: string, _o: unknown, cmd: Command) => {
      let raw: unknown;
      try {
        raw = JSON.parse(await fs.readFile(file, 'utf8'));
      } catch (e) {
        throw new ValidationError(`cannot read batch file ${file}: ${(e as Error).message}`, { field: 'file' });
      }
      const req = parseOrThrow(BatchRequest, Array.isArray(raw) ? { items: raw } : raw, 'batch file');
      progress(`submitting ${req.items.length} fork requests…`);
      const r = await withScheduler(cmd, (call) => call('batch', { ...req, key: req.key ?? newId('batch', 16) }));
      if (globals(cmd).json) printJson(r);
      else {
        const rows = r.results.flatMap((x, i) =>
          x.ok ? x.result.children.map((c) => ({ item: i, source: req.items[i]?.source, child: c.id, host: c.host, state: c.state })) : [{ item: i, source: req.items[i]?.source, child: `error ${x.error.code}: ${x.error.message}` }],
        );
        printTable(rows, ['item', 'source', 'child', 'host', 'state']);
      }
      if (r.results.some((x) => !x.ok)) process.exitCode = 1;
    }),
  );

program
  .command('req <subject> [json]')
  .description('send a raw JSON request to any subject and print the JSON reply (for those without the nats CLI)')
  .action(
    action(async (subject: string, body: string | undefined, _o: unknown, cmd: Command) => {
      let value: unknown;
      try {
        value = JSON.parse(body ?? '{}');
      } catch (e) {
        throw new ValidationError(`the request body is not JSON: ${(e as Error).message}`, { field: 'json' });
      }
      const g = globals(cmd);
      const nc = await connectTo(await resolveConnection(g.server, dataOf(cmd)));
      try {
        printJson(await rawRequest(nc, subject, value, Number(g.timeout)));
      } finally {
        await nc.close();
      }
    }),
  );

await program.parseAsync();
