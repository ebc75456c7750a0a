import type { Command } from 'commander';
import { watch as watchIn } from '@forky/sdk';
import { guestText, safeJson } from '../guest-text.js';
import { INTERRUPTED_EXIT, cancelOnInterrupt } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';

interface WatchEvent {
  path: string;
  kind: string;
}

/** One line per event: `kind path` (escaped: the guest names them), or (--json) one JSON object, so a pipe reads them as they come. */
export function formatWatchEvent(e: WatchEvent, json: boolean): string {
  return json ? `${safeJson({ kind: String(e.kind), path: String(e.path) })}\n` : `${guestText(e.kind)} ${guestText(e.path)}\n`;
}

/** `forky vm watch ID PATH [--recursive]`: changes under a path in the guest, until Ctrl-C. */
export async function watch(cli: CliContext, id: string, p: string, o: { recursive?: boolean }, cmd: Command): Promise<void> {
  const json = cli.json(cmd);
  const onDropped = (why: 'guest' | 'hand-over'): void =>
    void process.stderr.write(
      why === 'guest'
        ? 'forky: some events were dropped\n'
        : 'forky: the VM was handed over (a snapshot): changes meanwhile were not seen\n',
    );
  const interrupted = await cli.withSession(cmd, async (s) => {
    // The SDK's watch follows the VM across a snapshot; Ctrl-C stops it in the guest, and it ends.
    const w = await watchIn(s, id, p, { recursive: !!o.recursive, onDropped });
    return cancelOnInterrupt({ cancel: () => w.close() }, async (stopped) => {
      for await (const e of w) process.stdout.write(formatWatchEvent(e, json));
      return stopped();
    });
  });
  process.exitCode = interrupted ? INTERRUPTED_EXIT : 0;
}
