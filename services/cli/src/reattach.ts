import { ForkyError, asForkyError, delay } from '@forky/base';
import type { Session } from './session.js';
import { runStream, type StreamEnd } from './streams-io.js';

/** How long the VM may take to come back from a snapshot before we give the process up. */
const HAND_OVER_MS = 120_000;
/** Codes an attach meets while the VM is still being handed over: worth another try. */
const PASSING = new Set(['INVALID_STATE', 'UNAVAILABLE', 'CAPACITY']);

/** A stream that ended because the VM's agent session did (a snapshot's hand-over), not because its process did. */
export const endedWithSession = (end: StreamEnd): boolean => !end.ok && end.code === 'GONE';

/**
 * A snapshot hands a VM over to a new QEMU process, which ends the VM's streams (GONE) while their
 * processes run on (libs/agent/PROTOCOL.md). This follows such a process again by pid on the VM's
 * new session and prints only what was not printed yet: the process's buffer replays its output
 * from its start, or from the bytes it dropped, in the order it came (both channels). Its stdin
 * is gone with the old session. A Ctrl-C kills it, as it would have the exec.
 */
export async function followAfterHandOver(
  s: Session,
  id: string,
  pid: number,
  printed: number,
  onOutput: (kind: 'stdout' | 'stderr', bytes: Uint8Array) => Promise<void> | void,
): Promise<{ end: StreamEnd; interrupted: boolean }> {
  const deadline = Date.now() + HAND_OVER_MS;
  for (;;) {
    let st;
    try {
      st = await s.stream('proc.attach', { id, pid, follow: true });
    } catch (e) {
      const err = asForkyError(e);
      if (!PASSING.has(err.code) || Date.now() > deadline) throw err;
      await delay(250);
      continue;
    }
    let skip = printed;
    const before = printed;
    try {
      const r = await runStream(
        st,
        undefined,
        (kind, bytes) => {
          if (skip >= bytes.length) {
            skip -= bytes.length;
            return;
          }
          const rest = bytes.subarray(skip);
          skip = 0;
          printed += rest.length;
          return onOutput(kind, rest);
        },
        (event) => {
          if (event.type !== 'dropped') return;
          const dropped = Number(event.bytes) || 0;
          if (dropped > before) process.stderr.write(`# ${dropped - before} bytes of output were lost while the VM was handed over\n`);
          // What the buffer still holds starts at byte `dropped` of the process's output.
          skip = Math.max(0, before - dropped);
          printed = Math.max(before, dropped);
        },
      );
      if (r.interrupted) await s.call('proc.signal', { id, pid, signal: 'KILL' }).catch(() => undefined);
      // The new session went too (another snapshot): follow it once more, from what is printed now.
      if (endedWithSession(r.end) && !r.interrupted && Date.now() < deadline) continue;
      if (r.end.ok && r.end.exitCode === undefined)
        throw new ForkyError('UNAVAILABLE', `process ${pid} was followed again after a snapshot, but its exit was not seen`);
      return r;
    } finally {
      st.close();
    }
  }
}
