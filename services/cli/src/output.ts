import { safeJson } from './guest-text.js';

/** What a command prints: one JSON document with --json (C1 controls escaped too), a table or lines otherwise. */
export function printJson(v: unknown): void {
  process.stdout.write(safeJson(v, 2) + '\n');
}

/** Rows as a table of the named columns, upper-case headers; a missing value is `-`. */
export function formatTable<T extends object>(rows: readonly T[], columns: ReadonlyArray<keyof T & string>): string {
  if (rows.length === 0) return '(none)\n';
  const cells = rows.map((r) => columns.map((c) => fmt(r[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => (row[i] as string).length)));
  const line = (vals: string[]): string =>
    vals
      .map((v, i) => v.padEnd(widths[i] as number))
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n') + '\n';
}

export function printTable<T extends object>(rows: readonly T[], columns: ReadonlyArray<keyof T & string>): void {
  process.stdout.write(formatTable(rows, columns));
}

const fmt = (v: unknown): string => (v === undefined || v === null ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** Progress for people: on a terminal only, on stderr, so scripts and --json stay clean. */
export function progress(msg: string): void {
  if (process.stderr.isTTY) process.stderr.write(`${msg}\n`);
}
