import type { Command } from 'commander';
import { newId } from '@forky/base';
import type { IdleRule } from '@forky/contract';
import { printJson, printTable } from '../output.js';
import type { CliContext } from '../commands/context.js';
import { VM_COLUMNS, parsePairs, vmRows } from './vm.js';

interface ForkOptions {
  count: number;
  host?: string;
  spread?: boolean;
  resumeParent?: boolean;
  live?: boolean;
  until: 'ready' | 'running';
  app: string[];
  label: string[];
  env: string[];
  ttl?: number;
  idle?: IdleRule;
}

/** `forky fork SOURCE --count N`: a VM or a snapshot into N children. */
export async function fork(cli: CliContext, source: string, o: ForkOptions, cmd: Command): Promise<void> {
  const live = !!(o.live ?? o.resumeParent);
  const key = newId('fork', 16);
  const labels = parsePairs(o.label, 'label');
  const env = parsePairs(o.env, 'env');
  const r = await cli.withSession(cmd, async (s) => {
    const apps = await s.uploadApps(o.app);
    return s.call('fork', {
      source,
      count: o.count,
      spread: !!o.spread,
      resumeParent: live,
      until: o.until,
      key,
      ...(apps.length ? { apps } : {}),
      ...(o.host ? { host: o.host } : {}),
      ...(o.label.length ? { labels } : {}),
      ...(o.ttl ? { ttlMs: o.ttl } : {}),
      ...(o.idle ? { idle: o.idle } : {}),
      // Per-child values differ only in a batch file; here every child gets the same env.
      ...(o.env.length ? { perChild: Array.from({ length: o.count }, () => ({ env })) } : {}),
    });
  });
  if (cli.json(cmd)) printJson(r);
  else {
    const pause = r.timings.pauseMs === undefined ? '' : `; parent paused ${r.timings.pauseMs} ms`;
    process.stdout.write(`snapshot ${r.snapshot.id}; ${r.children.length} children in ${r.timings.totalMs} ms${pause}\n`);
    printTable(vmRows(r.children), VM_COLUMNS);
  }
}
