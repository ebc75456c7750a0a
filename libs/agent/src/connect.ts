import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { ForkyError, type Logger } from '@forky/base';
import { encodeFrame, FrameReader, FrameType, HELLO_PREFIX_BYTES } from './frame.js';
import { MAX_GARBAGE_BYTES } from './limits.js';
import { parseHelloAck } from './messages.js';
import { AgentSession } from './session.js';
import type { GuestSession } from './types.js';

export interface ConnectOptions {
  /** Connect and HELLO_ACK must both happen within this. */
  timeoutMs: number;
  log?: Logger;
  /** How long a CANCEL may go unanswered before the stream is ended PROTOCOL and forgotten (default 10 s). */
  cancelGraceMs?: number;
}

/**
 * Opens a session on a VM's agent socket: zeros, then HELLO with a fresh session id; every byte
 * before the HELLO_ACK carrying that id is dropped (PROTOCOL.md, Session start).
 */
export function connectAgent(socketPath: string, opts: ConnectOptions): Promise<GuestSession> {
  const session = randomBytes(16).toString('hex');
  const reader = new FrameReader();
  const socket = net.createConnection(socketPath);
  let connected = false;
  return new Promise<GuestSession>((resolve, reject) => {
    const fail = (err: ForkyError): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => {
      const what = connected ? 'forky-agent did not answer HELLO' : 'connect did not complete';
      fail(
        new ForkyError('TIMEOUT', `agent socket ${socketPath}: ${what} within ${opts.timeoutMs} ms`, {
          details: { timeoutMs: opts.timeoutMs },
        }),
      );
    }, opts.timeoutMs);
    const onConnect = (): void => {
      connected = true;
      socket.write(Buffer.alloc(HELLO_PREFIX_BYTES));
      socket.write(encodeFrame(FrameType.HELLO, 0, Buffer.from(JSON.stringify({ v: 1, session }))));
    };
    const onError = (err: Error): void => {
      const what = connected ? 'failed before HELLO_ACK' : 'connect failed';
      fail(new ForkyError('UNAVAILABLE', `agent socket ${socketPath}: ${what}: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => fail(new ForkyError('UNAVAILABLE', `agent socket ${socketPath}: closed before forky-agent answered HELLO`));
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type !== FrameType.HELLO_ACK || f.stream !== 0) continue;
        // Stale acks (an earlier session's, or a parent's before a fork) carry another id: dropped.
        let id: unknown;
        try {
          id = (JSON.parse(f.payload.toString('utf8')) as { session?: unknown }).session;
        } catch {
          continue;
        }
        if (id !== session) continue;
        const ack = parseHelloAck(f.payload);
        if (!ack.ok) return fail(new ForkyError('INCOMPATIBLE', `agent socket ${socketPath}: ${ack.why}`));
        cleanup();
        resolve(new AgentSession(socket, reader, ack.value, socketPath, { log: opts.log, cancelGraceMs: opts.cancelGraceMs }));
        return;
      }
      if (reader.garbageBytes > MAX_GARBAGE_BYTES)
        fail(new ForkyError('UNAVAILABLE', `agent socket ${socketPath}: more than ${MAX_GARBAGE_BYTES} bytes of garbage before HELLO_ACK`));
    };
    function cleanup(): void {
      clearTimeout(timer);
      socket.off('connect', onConnect).off('error', onError).off('close', onClose).off('data', onData);
    }
    socket.on('connect', onConnect).on('error', onError).on('close', onClose).on('data', onData);
  });
}
