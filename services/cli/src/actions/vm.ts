import type { Command } from 'commander';
import { ValidationError, newId } from '@forky/base';
import { Labels, type IdleRule, type VmInfo } from '@forky/contract';
import { printJson, printTable } from '../output.js';
import type { CliContext } from '../commands/context.js';
import type { SelfForkArg } from '../commands/self-fork-option.js';
import { remaining } from '../lifetime-args.js';
import { parseEgress } from './net.js';

/** A VM as a table row: labels as `k=v,k=v`, `expires` as the time left of its TTL. */
type VmRow = Omit<VmInfo, 'labels'> & { labels?: string; expires?: string };

export const VM_COLUMNS = [
  'id',
  'name',
  'host',
  'state',
  'image',
  'memMiB',
  'parentSnapshot',
  'pid',
  'expires',
  'labels',
] as const satisfies ReadonlyArray<keyof VmRow>;

/** `K=V` options (`--label`, `--env`) as a record; the contract checks the keys and values. */
export function parsePairs(pairs: readonly string[], field: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const at = p.indexOf('=');
    if (at <= 0) throw new ValidationError(`--${field} ${JSON.stringify(p)}: expected KEY=VALUE`, { field });
    out[p.slice(0, at)] = p.slice(at + 1);
  }
  return out;
}

/** `--label K=V` options, checked here as the contract would (for a filter applied on this side: nothing is sent). */
export function parseLabels(pairs: readonly string[]): Labels {
  const r = Labels.safeParse(parsePairs(pairs, 'label'));
  if (!r.success) throw new ValidationError(`--label: ${r.error.issues[0]?.message ?? 'not labels'}`, { field: 'label' });
  return r.data;
}

/** Rows for a table: labels as `k=v,k=v`, the TTL as what is left of it. */
export const vmRows = (vms: readonly VmInfo[], now = Date.now()): VmRow[] =>
  vms.map(({ labels, ...v }) => {
    const expires = remaining(v.lifecycle?.expiresAt, now);
    return {
      ...v,
      ...(expires ? { expires } : {}),
      ...(labels
        ? {
            labels: Object.entries(labels)
              .map(([k, x]) => `${k}=${x}`)
              .join(','),
          }
        : {}),
    };
  });

interface ListOptions {
  label: string[];
  state: string[];
  parent?: string;
  image?: string;
  template?: string;
}

interface BootOptions {
  image?: string;
  mem?: number;
  cpus?: number;
  template?: string;
  gpus: number;
  app: string[];
  host?: string;
  egress?: string;
  dns: boolean;
  disk?: number;
  name?: string;
  label: string[];
  ttl?: number;
  idle?: IdleRule;
  selfFork?: SelfForkArg;
}

const printVms = (cli: CliContext, cmd: Command, vms: VmInfo[], one = false): void =>
  cli.json(cmd) ? printJson(one ? vms[0] : vms) : printTable(vmRows(vms), VM_COLUMNS);

export async function boot(cli: CliContext, o: BootOptions, cmd: Command): Promise<void> {
  const key = newId('boot', 16);
  const network = o.egress === undefined ? undefined : { egress: parseEgress(o.egress, o.dns) };
  const labels = parsePairs(o.label, 'label');
  const v = await cli.withSession(cmd, async (s) => {
    const apps = await s.uploadApps(o.app);
    return s.call('vm.boot', {
      key,
      ...(o.image ? { image: o.image } : {}),
      ...(o.mem ? { memMiB: o.mem } : {}),
      ...(o.cpus ? { cpus: o.cpus } : {}),
      ...(o.template ? { template: o.template } : {}),
      ...(o.gpus ? { gpus: o.gpus } : {}),
      ...(apps.length ? { apps } : {}),
      ...(o.host ? { host: o.host } : {}),
      ...(network ? { network } : {}),
      ...(o.disk ? { diskGiB: o.disk } : {}),
      ...(o.name ? { name: o.name } : {}),
      ...(o.label.length ? { labels } : {}),
      ...(o.ttl ? { ttlMs: o.ttl } : {}),
      ...(o.idle ? { idle: o.idle } : {}),
      ...(o.selfFork ? { selfFork: o.selfFork } : {}),
    });
  });
  printVms(cli, cmd, [v], true);
}

export async function ls(cli: CliContext, o: ListOptions, cmd: Command): Promise<void> {
  const state = o.state.flatMap((s) => s.split(',')).filter((s) => s !== '');
  const filter = {
    ...(o.label.length ? { labels: parsePairs(o.label, 'label') } : {}),
    ...(state.length ? { state: state as VmInfo['state'][] } : {}),
    ...(o.parent ? { parent: o.parent } : {}),
    ...(o.image ? { image: o.image } : {}),
    ...(o.template ? { template: o.template } : {}),
  };
  printVms(cli, cmd, (await cli.withSession(cmd, (s) => s.call('vm.list', filter))).vms);
}

// No key in these requests' contract: the client sends them once (a lost reply is not re-sent).
const byId =
  (endpoint: 'vm.show' | 'vm.pause' | 'vm.resume') =>
  async (cli: CliContext, id: string, _o: unknown, cmd: Command): Promise<void> =>
    printVms(cli, cmd, [await cli.withSession(cmd, (s) => s.call(endpoint, { id }))], true);
export const show = byId('vm.show');
export const pause = byId('vm.pause');
export const resume = byId('vm.resume');

export async function extend(cli: CliContext, id: string, o: { ttl: number }, cmd: Command): Promise<void> {
  printVms(cli, cmd, [await cli.withSession(cmd, (s) => s.call('vm.extend', { id, ttlMs: o.ttl }))], true);
}

export async function rm(cli: CliContext, ids: string[], _o: unknown, cmd: Command): Promise<void> {
  const gone = await cli.withSession(cmd, async (s) => {
    const out: VmInfo[] = [];
    for (const id of ids) out.push(await s.call('vm.destroy', { id }));
    return out;
  });
  printVms(cli, cmd, gone);
}

export async function app(cli: CliContext, id: string, o: { app: string[] }, cmd: Command): Promise<void> {
  const key = newId('app', 16);
  const v = await cli.withSession(cmd, async (s) => s.call('vm.app', { id, apps: await s.uploadApps(o.app), key }));
  printVms(cli, cmd, [v], true);
}
