import { ValidationError } from '@forky/base';
import { FrameType, MAX_PAYLOAD, type Frame } from './frame.js';
import { DEFAULT_WINDOW, MAX_WINDOW } from './limits.js';
import { TcpOpenSchema, opSendsData, parseEnd, parseMsg } from './messages.js';
import type { AgentStream } from './stream.js';
import type { AgentEnd, GuestRequest } from './types.js';

/**
 * Applies one agent frame to a live stream; returns what was wrong with it, if anything (the
 * session then ends the stream with PROTOCOL). An END, good or bad, means the agent forgot it.
 */
export function applyStreamFrame(stream: AgentStream, { type, payload }: Frame): string | undefined {
  switch (type) {
    case FrameType.OPENED:
      if (payload.length !== 0) return 'OPENED with a payload';
      if (stream.opened) return 'a second OPENED';
      stream.opened = true;
      return undefined;
    case FrameType.DATA: {
      const channel = payload[0];
      if (channel !== 1 && channel !== 2) return `DATA on channel ${channel ?? '(none)'}`;
      if (!opSendsData(stream.op)) return `DATA on a ${stream.op} stream`;
      const n = payload.length - 1;
      if (n > stream.outstanding) return `DATA of ${n} bytes beyond the ${stream.outstanding} bytes of credit`;
      stream.onData(channel, payload.subarray(1));
      return undefined;
    }
    case FrameType.EOF: {
      const channel = payload[0];
      if (payload.length !== 1 || (channel !== 1 && channel !== 2)) return 'EOF without a channel 1 or 2';
      if (stream.seen.has(`eof${channel}`)) return `a second EOF on channel ${channel}`;
      stream.seen.add(`eof${channel}`);
      stream.onEof(channel);
      return undefined;
    }
    case FrameType.CREDIT:
      if (payload.length !== 4) return `CREDIT of ${payload.length} bytes`;
      stream.onCredit(payload.readUInt32BE(0));
      return undefined;
    case FrameType.MSG: {
      const msg = parseMsg(payload, stream.op);
      if (!msg.ok) return msg.why;
      // At most one of each per stream (PROTOCOL.md): a repeat is a violation.
      if (msg.value.type === 'started' || msg.value.type === 'stat') {
        if (stream.seen.has(msg.value.type)) return `a second MSG ${msg.value.type}`;
        stream.seen.add(msg.value.type);
      }
      stream.onMsg(msg.value, payload.length);
      return undefined;
    }
    case FrameType.END: {
      stream.agentEnded = true;
      const end = parseEnd(payload);
      if (!end.ok) return end.why;
      stream.finish(end.value, false);
      return undefined;
    }
    default:
      return `frame type 0x${type.toString(16)}`;
  }
}

export function protocolEnd(stream: AgentStream, why: string): AgentEnd {
  return { ok: false, code: 'PROTOCOL', message: `forky-agent broke the protocol on stream ${stream.id} (${stream.op}): ${why}` };
}

export function goneEnd(stream: AgentStream, reason: string): AgentEnd {
  return { ok: false, code: 'GONE', message: `forky-agent session closed before stream ${stream.id} (${stream.op}) ended: ${reason}` };
}

/** An OPEN's window and payload, checked before a stream is made for it. */
export function checkOpen(req: GuestRequest, w: number | undefined): { window: number; payload: Buffer } {
  const window = w ?? DEFAULT_WINDOW;
  if (!Number.isInteger(window) || window < 1 || window > MAX_WINDOW) {
    throw new ValidationError(`window must be an integer from 1 to ${MAX_WINDOW}`, { field: 'window' });
  }
  if (req.op === 'tcp' && !TcpOpenSchema.safeParse(req).success)
    throw new ValidationError('a tcp port must be a whole number from 1 to 65535', { field: 'port' });
  const payload = Buffer.from(JSON.stringify(req));
  if (payload.length > MAX_PAYLOAD) throw new ValidationError(`${req.op} request of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  return { window, payload };
}
