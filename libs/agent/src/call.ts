import { CapacityError, DeadlineError, ForkyError } from '@forky/base';
import { MAX_CALL_MSG_BYTES } from './limits.js';
import type { AgentEnd, AgentMsg, GuestSession, GuestStream } from './types.js';

/** Drains a stream to its END within `timeoutMs`, collecting its MSGs (at most MAX_CALL_MSG_BYTES of them). */
export async function callStream(stream: GuestStream, timeoutMs: number, what: string): Promise<{ end: AgentEnd; msgs: AgentMsg[] }> {
  const msgs: AgentMsg[] = [];
  let msgBytes = 0;
  const drain = (async (): Promise<AgentEnd> => {
    for await (const ev of stream.events) {
      if (ev.kind === 'msg') {
        msgBytes += Buffer.byteLength(JSON.stringify(ev.msg));
        if (msgBytes > MAX_CALL_MSG_BYTES) {
          stream.cancel();
          throw new CapacityError(`${what}: more than ${MAX_CALL_MSG_BYTES} bytes of messages; stream it with open()`);
        }
        msgs.push(ev.msg);
      } else if (ev.kind === 'end') return ev.end;
    }
    return stream.ended;
  })();
  // The deadline may win; the drain then finishes (or fails) on its own and must not go unhandled.
  drain.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      stream.cancel();
      reject(new DeadlineError(what, timeoutMs));
    }, timeoutMs);
  });
  try {
    return { end: await Promise.race([drain, deadline]), msgs };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Asks the agent something only an agent holding this session's HELLO answers (a PING is answered
 * before any HELLO too, so it cannot tell an agent restarted in the guest): a `stat` of `/`. Any
 * END the agent sent will do; none within `timeoutMs` rejects UNAVAILABLE.
 */
export async function probeSession(session: GuestSession, timeoutMs: number, socketPath: string): Promise<void> {
  let end: AgentEnd;
  try {
    ({ end } = await session.call({ op: 'stat', path: '/' }, timeoutMs));
  } catch (e) {
    throw new ForkyError(
      'UNAVAILABLE',
      `forky-agent on ${socketPath} did not answer on this session within ${timeoutMs} ms (restarted, or not reading its port)`,
      { cause: e },
    );
  }
  // Made up by the host, not sent by the agent.
  if (!end.ok && (end.code === 'GONE' || end.code === 'PROTOCOL')) {
    throw new ForkyError('UNAVAILABLE', `forky-agent session on ${socketPath}: ${end.message}`);
  }
}
