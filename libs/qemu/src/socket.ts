import net from 'node:net';
import { withDeadline } from '@forky/base';

/** What one read from the socket may fill: the size libuv reads by default. */
const READ_BUFFER = 64 << 10;

/**
 * Connects to a unix socket, or fails at the deadline; the socket never leaks on failure.
 * With `onRead`, every read lands in one reused buffer handed to `onRead` (no 'data' events):
 * nothing is allocated per read, so a peer streaming bytes we discard costs no memory. `onRead`
 * must copy what it keeps; the buffer is overwritten by the next read.
 */
export async function connectUnix(path: string, timeoutMs: number, what: string, onRead?: (chunk: Buffer) => void): Promise<net.Socket> {
  const buffer = onRead ? Buffer.allocUnsafe(READ_BUFFER) : undefined;
  const sock = net.createConnection({
    path,
    ...(onRead && buffer
      ? {
          onread: {
            buffer,
            callback: (n: number, b: Uint8Array): boolean => {
              onRead(Buffer.from(b.buffer, b.byteOffset, n));
              return true; // keep reading
            },
          },
        }
      : {}),
  });
  try {
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('error', reject);
      }),
      timeoutMs,
      `${what} connect ${path}`,
    );
    return sock;
  } catch (e) {
    sock.destroy();
    throw e;
  }
}
