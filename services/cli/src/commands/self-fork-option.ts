import { InvalidArgumentError, Option } from 'commander';

/** `--self-fork`'s value as BootRequest.selfFork takes it (hostd checks the ranges, naming the field). */
export interface SelfForkArg {
  maxChildren: number;
  maxDepth: number;
  maxAlive: number;
}

const KEYS: Readonly<Record<string, keyof SelfForkArg>> = {
  'max-children': 'maxChildren',
  'max-depth': 'maxDepth',
  'max-alive': 'maxAlive',
};
const USAGE = 'max-children=N,max-depth=D,max-alive=A (each once, whole numbers)';

/** `max-children=8,max-depth=1,max-alive=9`: all three, each once. */
export function selfForkArg(v: string): SelfForkArg {
  const out: Partial<SelfForkArg> = {};
  for (const part of v.split(',')) {
    const [k = '', n = '', ...rest] = part.split('=');
    const key = KEYS[k.trim()];
    if (!key || rest.length > 0 || !/^\d{1,6}$/.test(n.trim()) || out[key] !== undefined)
      throw new InvalidArgumentError(`--self-fork takes ${USAGE}, not ${JSON.stringify(v).slice(0, 80)}`);
    out[key] = Number(n.trim());
  }
  if (out.maxChildren === undefined || out.maxDepth === undefined || out.maxAlive === undefined)
    throw new InvalidArgumentError(`--self-fork takes ${USAGE}: all three`);
  return { maxChildren: out.maxChildren, maxDepth: out.maxDepth, maxAlive: out.maxAlive };
}

/** `forky vm boot --self-fork …`: the guest may fork itself (`forky-fork`) within this budget. */
export const selfForkOption = (): Option =>
  new Option('--self-fork <budget>', `let the guest fork itself (forky-fork) within ${USAGE}, shared down what it forks`).argParser(
    selfForkArg,
  );
