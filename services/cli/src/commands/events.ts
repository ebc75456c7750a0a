import { InvalidArgumentError, type Command } from 'commander';
import type { EventKind } from '@forky/contract';
import { collect, type CliContext } from './context.js';

/** The contract's event kinds (kept here so that parsing --kind needs no zod; cli-startup.test.ts checks they are the contract's). */
export const EVENT_KINDS = [
  'created',
  'ready',
  'paused',
  'resumed',
  'forked',
  'snapshot',
  'destroyed',
  'failed',
  'expired',
] as const satisfies readonly EventKind[];

export function parseKind(v: string, acc: EventKind[]): EventKind[] {
  if (!(EVENT_KINDS as readonly string[]).includes(v)) throw new InvalidArgumentError(`--kind must be one of ${EVENT_KINDS.join(', ')}`);
  return [...acc, v as EventKind];
}

/** `forky events [--vm ID] [--kind K]... [--host H] [--label K=V]...`: the cluster's VM and snapshot events as they happen, until Ctrl-C. */
export function registerEvents(program: Command, cli: CliContext): void {
  program
    .command('events')
    .description(
      'print VM and snapshot events as they happen (one line each; --json: one object each), until Ctrl-C; ' +
        "the same as `nats sub 'forky.v1.events.>'`",
    )
    .option('--vm <id>', 'only events of this VM')
    .option('--kind <kind>', `only this kind (repeatable): ${EVENT_KINDS.join(', ')}`, parseKind, [])
    .option('--host <id>', 'only events of this host')
    .option('--label <k=v>', "only events with this label (repeatable: all of them; a snapshot's are its VM's)", collect, [])
    .action(cli.lazy(() => import('../actions/events.js'), 'events'));
}
