import fs from 'node:fs/promises';
import type { Command } from 'commander';
import { ValidationError, newId } from '@forky/base';
import { BatchRequest, parseOrThrow, type BatchResult } from '@forky/contract';
import { printJson, printTable, progress } from '../output.js';
import type { CliContext } from '../commands/context.js';

interface BatchRow {
  item: number;
  source: string | undefined;
  /** A child's id, or the item's error. */
  child: string;
  host?: string;
  state?: string;
}

/** One row per child, or one per failed item. */
export function batchRows(req: BatchRequest, r: BatchResult): BatchRow[] {
  return r.results.flatMap((x, i): BatchRow[] => {
    const source = req.items[i]?.source;
    if (!x.ok) return [{ item: i, source, child: `error ${x.error.code}: ${x.error.message}` }];
    return x.result.children.map((c) => ({ item: i, source, child: c.id, host: c.host, state: c.state }));
  });
}

/** `forky batch submit FILE`: many forks in one keyed request. */
export async function submit(cli: CliContext, file: string, _o: unknown, cmd: Command): Promise<void> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new ValidationError(`cannot read batch file ${file}: ${(e as Error).message}`, { field: 'file' });
  }
  const req = parseOrThrow(BatchRequest, Array.isArray(raw) ? { items: raw } : raw, 'batch file');
  progress(`submitting ${req.items.length} fork requests…`);
  const key = req.key ?? newId('batch', 16);
  const r = await cli.withSession(cmd, (s) => s.call('batch', { ...req, key }));
  if (cli.json(cmd)) printJson(r);
  else printTable(batchRows(req, r), ['item', 'source', 'child', 'host', 'state']);
  if (r.results.some((x) => !x.ok)) process.exitCode = 1;
}
