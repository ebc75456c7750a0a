import type { Command } from 'commander';
import { guestText, safeJson } from '../guest-text.js';
import { INTERRUPTED_EXIT, cancelOnInterrupt, consume, endError } from '../streams-io.js';
import type { CliContext } from '../commands/context.js';

interface WatchEvent {
  path: string;
  kind: 'create' | 'modify' | 'delete' | 'move';
}

/** One line per event: `kind path` (escaped: the guest names them), or (--json) one JSON object, so a pipe reads them as they come. */
export function formatWatchEvent(e: WatchEvent, json: boolean): string {
  return json ? `${safeJson({ kind: String(e.kind), path: String(e.path) })}\n` : `${guestText(e.kind)} ${guestText(e.path)}\n`;
}

/** `forky vm watch ID PATH [--recursive]`: changes under a path in the guest, until Ctrl-C. */
export async function watch(cli: CliContext, id: string, p: string, o: { recursive?: boolean }, cmd: Command): Promise<void> {
  const json = cli.json(cmd);
  const r = await cli.withSession(cmd, async (s) => {
    const st = await s.stream('file.watch', { id, path: p, recursive: !!o.recursive });
    try {
      return await cancelOnInterrupt(st, async (interrupted) => {
        const end = await consume(
          st,
          () => undefined,
          (ev) => {
            if (ev.type === 'dropped') process.stderr.write(`forky: some events were dropped\n`);
            if (ev.type !== 'events' || !Array.isArray(ev.events)) return;
            for (const e of ev.events as WatchEvent[]) process.stdout.write(formatWatchEvent(e, json));
          },
        );
        return { end, interrupted: interrupted() };
      });
    } finally {
      st.close();
    }
  });
  if (!r.end.ok) throw endError(r.end);
  process.exitCode = r.interrupted ? INTERRUPTED_EXIT : 0;
}
