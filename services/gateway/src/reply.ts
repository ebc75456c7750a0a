import { STATUS_CODES } from 'node:http';
import type net from 'node:net';

/** How long a refused connection may take to read our short answer before it is dropped. */
const LINGER_MS = 2_000;

/**
 * A whole response of the gateway's own (never the guest's): plain text, not cached, and the
 * connection closed after it, since what follows on it was not read and must not be taken as a request.
 */
export function response(status: number, text: string, extra: Record<string, string> = {}): Buffer {
  const body = Buffer.from(text ? `${text}\n` : '');
  const head = {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': String(body.length),
    'Cache-Control': 'no-store',
    Connection: 'close',
    ...extra,
  };
  const lines = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`, ...Object.entries(head).map(([k, v]) => `${k}: ${v}`)];
  return Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1'), body]);
}

/** Sends a response and closes; a peer that does not read it is dropped after a short while. */
export function refuse(sock: net.Socket, status: number, text: string, extra?: Record<string, string>): void {
  if (sock.destroyed) return;
  sock.end(response(status, text, extra));
  // What the peer still sends is read and dropped: closing with unread bytes would reset the
  // connection, and the peer might lose our answer (a 431 while its head is still coming).
  sock.on('data', () => undefined).resume();
  setTimeout(() => sock.destroy(), LINGER_MS).unref();
}
