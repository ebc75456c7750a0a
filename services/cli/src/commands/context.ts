import { InvalidArgumentError, type Command } from 'commander';
import { dataDirOf } from '../paths.js';
import type { Session, SessionOptions } from '../session.js';

// Light on purpose: every run loads this module (and commander), so it imports neither the contract
// (zod) nor NATS: an action brings what it needs with `lazy`, when it runs.

/** The options every command takes, before or after its name. */
export interface Globals {
  server?: string;
  data?: string;
  json?: boolean;
  requestTimeout: number;
}

/** What the commands run on: the real cluster and process by default, a test's own otherwise. */
export interface CliDeps {
  openSession(o: SessionOptions): Promise<Session>;
  /** Ends the process with this code (2: bad input). A test's throws instead. */
  exit(code: number): never;
}

/** What an action module exports: a function of the context and commander's arguments. */
// `never[]`: any parameter list fits; commander passes its arguments, options and command untyped anyway.
type ActionFn = (cli: CliContext, ...args: never[]) => Promise<void>;
type ActionName<M> = { [K in keyof M]: M[K] extends ActionFn ? K : never }[keyof M] & string;

/** What a command module registers its commands with. */
export class CliContext {
  constructor(readonly deps: CliDeps) {}

  globals(cmd: Command): Globals {
    return cmd.optsWithGlobals<Globals>();
  }

  dataOf(cmd: Command): string {
    return dataDirOf(this.globals(cmd).data);
  }

  json(cmd: Command): boolean {
    return this.globals(cmd).json === true;
  }

  /** Runs `fn` with a session of the cluster the global options name, closed after. */
  async withSession<T>(cmd: Command, fn: (s: Session) => Promise<T>): Promise<T> {
    const g = this.globals(cmd);
    const s = await this.deps.openSession({ server: g.server, data: this.dataOf(cmd), requestTimeoutMs: g.requestTimeout });
    try {
      return await fn(s);
    } finally {
      await s.close();
    }
  }

  /** A commander action whose failure is said on stderr and ends the process: 2 for bad input, 1 otherwise. */
  action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
    return (...args: A) =>
      fn(...args).catch(async (e: unknown) => {
        // Loaded on failure only: it knows ForkyError, so it brings @forky/base.
        const { describeError, failureExitCode } = await import('../describe-error.js');
        process.stderr.write(describeError(e));
        return this.deps.exit(failureExitCode(e));
      });
  }

  /** The action `name` of the module `load` imports, loaded when the command runs (not when it is registered). */
  lazy<M>(load: () => Promise<M>, name: ActionName<M>): (...args: unknown[]) => Promise<void> {
    return this.action(async (...args: unknown[]) => {
      const fn = (await load())[name] as unknown as (cli: CliContext, ...a: unknown[]) => Promise<void>;
      return fn(this, ...args);
    });
  }
}

export const positiveInt =
  (field: string) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--${field} must be a positive whole number`);
    return n;
  };

export const nonNegativeInt =
  (field: string) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--${field} must be a whole number, 0 or more`);
    return n;
  };

/** For a repeatable option. */
export const collect = (v: string, acc: string[]): string[] => [...acc, v];

export const APP_HELP = 'a host directory the guest sees at /mnt (default /app), read-only underneath, writable per VM (repeatable)';
