import { ForkyError } from '@forky/base';

/** What a command prints: one JSON document with --json, a table or lines otherwise. */
export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export function printTable(rows: Array<Record<string, unknown>>, columns: string[]): void {
  if (rows.length === 0) {
    process.stdout.write('(none)\n');
    return;
  }
  const cells = rows.map((r) => columns.map((c) => fmt(r[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => (row[i] as string).length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padEnd(widths[i] as number)).join('  ').trimEnd();
  process.stdout.write([line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n') + '\n');
}

const fmt = (v: unknown): string => (v === undefined || v === null ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** Progress for people: on a terminal only, on stderr, so scripts and --json stay clean. */
export function progress(msg: string): void {
  if (process.stderr.isTTY) process.stderr.write(`${msg}\n`);
}

/** An error for people: what went wrong and what to do; the exit code says which kind. */
export function fail(e: unknown): never {
  const fe = e instanceof ForkyError ? e : undefined;
  const msg = fe ? `${fe.code}: ${fe.message}` : e instanceof Error ? e.message : String(e);
  const hint = fe?.code === 'UNAVAILABLE' ? '\nhint: is the cluster up? `forky up --detach`, or pass --server / FORKY_SERVER' : '';
  process.stderr.write(`forky: ${msg}${hint}\n`);
  process.exit(fe?.code === 'BAD_REQUEST' ? 2 : 1);
}
