import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError } from '@forky/base';
import { DEFAULT_STREAM_WINDOW, StreamOpenReply, subjects } from '@forky/contract';
import { request } from './client.js';
import { watchConnection, watched } from './conn-watch.js';
import { ClientStream, type OpenStreamOptions } from './streams.js';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Opens a stream on `subject` (an open endpoint of the scheduler or of a host): errors of the
 * open are the usual wire errors. The window goes in the body, so the host holds no more for it.
 */
export async function openStream(nc: NatsConnection, subject: string, body: unknown, opts: OpenStreamOptions = {}): Promise<ClientStream> {
  const window = opts.window ?? DEFAULT_STREAM_WINDOW;
  const sent = isObject(body) ? { ...body, window } : body;
  // A reply lost with the connection would leave the open waiting its whole deadline: it fails at
  // once instead (not re-sent; a stream the host did open is cancelled there when never started).
  let onLost!: (why: string) => void;
  const lost = new Promise<never>((_, reject) => {
    onLost = (why) => reject(new ForkyError('UNAVAILABLE', `${subject}: ${why} before the open was answered`));
  });
  lost.catch(() => undefined);
  watchConnection(nc, onLost);
  let raw: unknown;
  try {
    raw = await Promise.race([request(nc, subject, sent, { timeoutMs: opts.timeoutMs ?? 30_000 }), lost]);
  } finally {
    watched.get(nc)?.delete(onLost);
  }
  const reply = StreamOpenReply.safeParse(raw);
  if (!reply.success) throw new ForkyError('INTERNAL', `${subject}: the reply is not a stream`);
  const ref = reply.data.stream;
  // Never publish where a reply says but the layout does not.
  const layout = { out: subjects.streamOut, in: subjects.streamIn, credit: subjects.streamCredit, cancel: subjects.streamCancel };
  if (ref && Object.entries(layout).some(([k, f]) => ref[k as keyof typeof layout] !== f(ref.host, ref.sid)))
    throw new ForkyError('INTERNAL', `${subject}: the stream's subjects are not its host's`);
  return new ClientStream(nc, ref, reply.data.pid, { ...opts, window });
}
