import { ForkyError } from '@forky/base';

/**
 * Which port call fails, and a record of every call made. Shared by the fault-injecting runtime
 * and the store wrappers, so one trace shows the order of calls across all ports of an operation.
 */

/** One port call: `runtime.load`, `layers.freeze`, `snapshots.adoptRam`, `directory.register`… */
export interface Call {
  call: string;
  args: readonly unknown[];
  /** For runtime calls: the VM and process generation the call is about. */
  vmId?: string;
  generation?: number;
}

export interface FaultOptions {
  /** Fail the n-th matching call after arming (1-based; default 1). */
  nth?: number;
  /** Only calls this accepts are counted. */
  where?: (c: Call) => boolean;
  error?: Error;
  /** The failing call waits for this first: a failure that comes once the test says so, without a sleep. */
  gate?: Promise<void>;
}

interface Fault {
  call: string;
  left: number;
  where: ((c: Call) => boolean) | undefined;
  /** Undefined: a hold (the call waits for its gate, then runs). */
  error: Error | undefined;
  gate: Promise<void> | undefined;
}

/** The error a fault throws unless told otherwise: typed, as the real adapters' errors are, and recognisable in messages. */
export class InjectedError extends ForkyError {
  override readonly name = 'InjectedError';
  constructor(message: string) {
    super('QEMU', message);
  }
}

export class FaultPlan {
  readonly calls: Call[] = [];
  #faults: Fault[] = [];

  /** Arms a one-shot failure of `call`. */
  fail(call: string, opts: FaultOptions = {}): void {
    this.#faults.push({
      call,
      left: opts.nth ?? 1,
      where: opts.where,
      error: opts.error ?? new InjectedError(`injected failure of ${call}`),
      gate: opts.gate,
    });
  }

  /** Holds the n-th matching `call` until `gate` resolves; then it runs as usual (a step kept under way, without a sleep). */
  hold(call: string, gate: Promise<void>, opts: Omit<FaultOptions, 'error' | 'gate'> = {}): void {
    this.#faults.push({ call, left: opts.nth ?? 1, where: opts.where, error: undefined, gate });
  }

  /** Faults armed and not yet fired: a test checks it hit the step it meant to. */
  get armed(): number {
    return this.#faults.length;
  }

  clear(): void {
    this.#faults = [];
  }

  /** Records `c`; if an armed fault is due, returns the call's failure (a rejected promise) or its hold (resolves when it may run). */
  check(c: Call): Promise<void> | undefined {
    this.calls.push(c);
    for (const f of this.#faults) {
      if (f.call !== c.call || (f.where && !f.where(c))) continue;
      if (--f.left > 0) continue;
      this.#faults = this.#faults.filter((x) => x !== f);
      const { error, gate } = f;
      if (!error) return gate;
      return gate ? gate.then(() => Promise.reject(error)) : Promise.reject(error);
    }
    return undefined;
  }

  /** How many calls named `call` were made since `from` (an index into `calls`). */
  count(call: string, from = 0, where?: (c: Call) => boolean): number {
    return this.calls.slice(from).filter((c) => c.call === call && (!where || where(c))).length;
  }
}

/**
 * `inner` with each async method failing as `plan` says. Methods listed in `sync` (plain getters
 * like `path`) pass through unrecorded. Calls go to `inner` itself, so its private fields work.
 */
export function withFaults<T extends object>(name: string, inner: T, plan: FaultPlan, sync: readonly string[] = []): T {
  return new Proxy(inner, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function' || typeof prop !== 'string' || sync.includes(prop)) {
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      }
      return (...args: unknown[]): unknown => {
        const failure = plan.check({ call: `${name}.${prop}`, args });
        if (failure) return failure.then(() => (value as (...a: unknown[]) => unknown).apply(target, args));
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}
