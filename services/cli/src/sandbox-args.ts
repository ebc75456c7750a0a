import { InvalidArgumentError } from 'commander';

// Option parsers of the command table: commander only, so that defining the commands loads nothing else.

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
