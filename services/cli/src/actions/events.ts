import type { Command } from 'commander';
import { ForkyError } from '@forky/base';
import type { EventKind, VmEvent } from '@forky/contract';
import { Forky } from '@forky/sdk';
import { guestText, safeJson } from '../guest-text.js';
import { INTERRUPTED_EXIT } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';
import { parseLabels } from './vm.js';

/**
 * One line per event: `at kind vm host` and what else it says, or (--json) the event as it came.
 * Every field is escaped: a failure's reason may quote QEMU or the guest.
 */
export function formatEvent(e: VmEvent, json: boolean): string {
  if (json) return `${safeJson(e)}\n`;
  const extra = [
    e.state && `state=${e.state}`,
    e.snapshot && `snapshot=${e.snapshot}`,
    e.parent && `parent=${e.parent}`,
    e.children && `children=${e.children.join(',')}`,
    e.image && `image=${e.image}`,
    e.labels &&
      `labels=${Object.entries(e.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(',')}`,
    // Last, so its spaces leave the line readable; guestText escapes what a terminal would obey.
    e.reason !== undefined && `reason=${e.reason}`,
  ].filter((x): x is string => typeof x === 'string');
  return `${[e.at, e.kind.padEnd(9), e.vm ?? '-', e.host, ...extra].map(guestText).join(' ')}\n`;
}

/** `forky events [--vm ID] [--kind K]... [--host H] [--label K=V]...`: the cluster's VM and snapshot events as they happen, until Ctrl-C. */
export async function events(
  cli: CliContext,
  o: { vm?: string; kind: EventKind[]; host?: string; label: string[] },
  cmd: Command,
): Promise<void> {
  // Checked before connecting: a bad filter sends nothing.
  const labels = o.label.length ? parseLabels(o.label) : undefined;
  const g = cli.globals(cmd);
  const json = cli.json(cmd);
  const forky = await Forky.connect({ ...(g.server ? { servers: g.server } : {}), data: cli.dataOf(cmd), name: 'forky-cli-events' });
  const stop = new AbortController();
  let sig: NodeJS.Signals | undefined;
  const onSignal = (s: NodeJS.Signals): void => ((sig = s), stop.abort());
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const events = forky.events({
      ...(o.vm ? { vm: o.vm } : {}),
      ...(o.kind.length ? { kinds: o.kind } : {}),
      ...(o.host ? { host: o.host } : {}),
      ...(labels ? { labels } : {}),
      signal: stop.signal,
    });
    await events.ready();
    // On a terminal only: a pipe gets events and nothing else.
    if (process.stderr.isTTY) process.stderr.write('forky: listening for events (Ctrl-C to stop)\n');
    for await (const e of events) process.stdout.write(formatEvent(e, json));
    if (events.dropped > 0) process.stderr.write(`forky: ${events.dropped} events dropped (this reader was behind)\n`);
    if (events.malformed > 0) process.stderr.write(`forky: ${events.malformed} malformed messages skipped\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await forky.close();
  }
  // Ended by a signal, as Ctrl-C is meant to end it; otherwise the connection went.
  if (sig) process.exitCode = sig === 'SIGINT' ? INTERRUPTED_EXIT : 143;
  else throw new ForkyError('UNAVAILABLE', 'the NATS connection closed');
}
