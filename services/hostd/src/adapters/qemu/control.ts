import net from 'node:net';
import { ForkyError } from '@forky/base';

/** forky-ident answers `ok` or `err N what: reason`; a guest sending more without a newline is refused, not buffered. */
const ANSWER_MAX = 4096;

/** Connects to a VM's control socket, sends `line`, and resolves with the first line back. */
export function askLine(socketPath: string, line: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(socketPath);
    let got = '';
    const done = (err?: Error, answer?: string): void => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(answer as string);
    };
    const timer = setTimeout(() => done(new ForkyError('TIMEOUT', `guest control did not answer within ${timeoutMs} ms`)), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${line}\n`));
    sock.on('data', (d: string) => {
      got += d;
      const nl = got.indexOf('\n');
      if (nl >= 0 && nl <= ANSWER_MAX) done(undefined, got.slice(0, nl));
      else if (got.length > ANSWER_MAX)
        done(new ForkyError('QEMU', `guest control sent more than ${ANSWER_MAX} bytes without an answer line`));
    });
    sock.on('error', (e) => done(new ForkyError('QEMU', `guest control socket: ${e.message}`, { cause: e })));
    sock.on('close', () => done(new ForkyError('QEMU', 'guest control socket closed before an answer')));
  });
}
