/** run-all.ts's rows, as a plain table and as Markdown (README's figures table is pasted from it). */
export interface Row {
  name: string;
  value: number | null;
  unit: string;
  target: number | null;
  kind?: 'max' | 'min' | undefined;
  met: boolean | null;
  /** The value over each baseline of the same run, by the baseline's name (null: it was not measured). */
  ratios: Record<string, number | null>;
  bench: string;
  /** A figure no target names: in the plain table only. */
  extra?: boolean;
}

const target = (r: Row): string => (r.target === null ? '' : `${r.kind === 'min' ? '≥' : '≤'} ${r.target}`);
const met = (r: Row): string => (r.met === null ? '' : r.met ? 'yes' : 'NO');
const value = (r: Row): string => (r.value === null ? 'n/a' : String(r.value));
const ratios = (r: Row): string =>
  Object.entries(r.ratios)
    .map(([to, x]) => `${x === null ? 'n/a' : `${x}×`} ${to}`)
    .join(', ');

export function plain(rows: Row[]): string[] {
  return [
    `${'figure'.padEnd(62)} ${'value'.padStart(9)} ${'unit'.padEnd(5)} ${'target'.padStart(8)}  met  ratios`,
    ...rows.map(
      (r) => `${r.name.padEnd(62)} ${value(r).padStart(9)} ${r.unit.padEnd(5)} ${target(r).padStart(8)}  ${met(r).padEnd(3)}  ${ratios(r)}`,
    ),
  ];
}

/** Pipes in a cell would split it. */
const cell = (s: string): string => s.replace(/\|/g, '\\|');

export function markdown(rows: Row[]): string[] {
  return [
    '| figure | value | target | met | ratio (same run) |',
    '|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${cell(r.name)} | ${value(r)}${r.unit ? ` ${r.unit}` : ''} | ${target(r)}${r.target !== null && r.unit ? ` ${r.unit}` : ''} | ${met(r)} | ${cell(ratios(r))} |`,
    ),
  ];
}
