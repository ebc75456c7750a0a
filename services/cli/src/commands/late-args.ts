import { Option, type Command } from 'commander';

type Parse = (v: string) => unknown;

/** The options whose parser is loaded late, and how to load it. */
const LATE = new WeakMap<Option, () => Promise<Parse>>();

/**
 * An option whose value is checked by a parser that needs the contract (zod), too heavy to load for
 * every run: commander keeps the text, and `parseLate` (the program's preAction hook) parses it
 * before the action runs, failing as commander's own argParser would (same message, exit 2).
 */
export function lateOption(flags: string, description: string, load: () => Promise<Parse>): Option {
  const o = new Option(flags, description);
  LATE.set(o, load);
  return o;
}

/** Parses the late options given on the command line of `cmd` (a default is already what it means). */
export async function parseLate(cmd: Command): Promise<void> {
  for (const o of cmd.options) {
    const load = LATE.get(o);
    const name = o.attributeName();
    if (!load || cmd.getOptionValueSource(name) !== 'cli') continue;
    const text = cmd.getOptionValue(name) as string;
    const parse = await load();
    try {
      cmd.setOptionValueWithSource(name, parse(text), 'cli');
    } catch (e) {
      const err = e as { code?: string; exitCode?: number; message: string };
      if (err.code !== 'commander.invalidArgument') throw e;
      cmd.error(`error: option '${o.flags}' argument '${text}' is invalid. ${err.message}`, { exitCode: err.exitCode, code: err.code });
    }
  }
}
