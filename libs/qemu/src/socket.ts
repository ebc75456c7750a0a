import net from 'node:net';
import { withDeadline } from '@forky/base';

/** Connects to a unix socket, or fails at the deadline; the socket never leaks on failure. */
export async function connectUnix(path: string, timeoutMs: number, what: string): Promise<net.Socket> {
  const sock = net.createConnection(path);
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
