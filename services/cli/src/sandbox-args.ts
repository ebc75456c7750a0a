import { InvalidArgumentError } from 'commander';
import { ForkyError } from '@forky/base';
import { VmId } from '@forky/contract';

/** `--env K=V` (repeatable) into an object; a bad one names the flag, as commander's own errors do. */
export const collectEnv = (v: string, acc: Record<string, string>): Record<string, string> => {
  const eq = v.indexOf('=');
  const key = eq < 0 ? '' : v.slice(0, eq);
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) {
    throw new InvalidArgumentError(`--env must be KEY=VALUE with KEY a variable name (letters, digits, _), not ${JSON.stringify(v)}`);
  }
  return { ...acc, [key]: v.slice(eq + 1) };
};

/** `--timeout MS`: a whole number of milliseconds, 0 for none. */
export const timeoutMs =
  (field: string) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--${field} must be a whole number of milliseconds (0: none)`);
    return n;
  };

const SIGNALS = ['TERM', 'KILL', 'INT', 'HUP', 'QUIT', 'USR1', 'USR2', 'STOP', 'CONT'] as const;
export type SignalName = (typeof SIGNALS)[number];
const BY_NUMBER: Record<string, SignalName> = {
  1: 'HUP',
  2: 'INT',
  3: 'QUIT',
  9: 'KILL',
  10: 'USR1',
  12: 'USR2',
  15: 'TERM',
  18: 'CONT',
  19: 'STOP',
};

/** `--signal S`: TERM, SIGTERM, term or 15 alike; only the signals the guest agent sends. */
export const parseSignal = (v: string): SignalName => {
  const name = BY_NUMBER[v] ?? v.toUpperCase().replace(/^SIG/, '');
  if (!(SIGNALS as readonly string[]).includes(name)) throw new InvalidArgumentError(`--signal must be one of ${SIGNALS.join(', ')}`);
  return name as SignalName;
};

export const parsePid = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError(`PID must be a process id (a positive whole number), not ${JSON.stringify(v)}`);
  return n;
};

/** One side of `forky cp`: a path in a VM (`VM:/abs/path`), a local path, or `-` (stdin or stdout). */
export type CpSide = { remote: true; vm: string; path: string } | { remote: false; path: string };

/** Bad input found in an action, not by commander: BAD_REQUEST, so it exits 2 as a usage error does. */
const bad = (msg: string): ForkyError => new ForkyError('BAD_REQUEST', msg);

export function parseCpSide(s: string): CpSide {
  const m = /^([^:/]+):(.*)$/.exec(s);
  if (!m || !VmId.safeParse(m[1]).success) return { remote: false, path: s };
  const p = m[2] as string;
  if (!p.startsWith('/')) throw bad(`${s}: the path in the VM must be absolute (VM:/path)`);
  return { remote: true, vm: m[1] as string, path: p };
}

/** A copy into the VM (`in`) or out of it: exactly one side is `VM:/path`. */
export interface CpPlan {
  direction: 'in' | 'out';
  vm: string;
  remote: string;
  /** `-`: stdin (in) or stdout (out). */
  local: string;
}

export function parseCp(src: string, dst: string): CpPlan {
  const a = parseCpSide(src);
  const b = parseCpSide(dst);
  if (a.remote && b.remote) throw bad('cp: exactly one side is VM:/path; both are (copy through the host)');
  if (!a.remote && !b.remote) throw bad('cp: exactly one side is VM:/path (a VM id, a colon, an absolute path); neither is');
  if (a.remote) return { direction: 'out', vm: a.vm, remote: a.path, local: b.path };
  if (b.remote) return { direction: 'in', vm: b.vm, remote: b.path, local: a.path };
  throw new Error('unreachable');
}
