import net from 'node:net';
import { withDeadline } from '@forky/base';

/** A reply as it came off the wire: the header block as text (if any) and the payload bytes. */
export interface RawReply {
  headers: string;
  data: Buffer;
}

/**
 * A NATS client speaking the text protocol itself, for frames the real client refuses to build:
 * header names with spaces, header values with control bytes, subjects and reply subjects with
 * odd bytes, header blocks that are not valid UTF-8. Talks to loopback only.
 */
export class RawNats {
  #buf = Buffer.alloc(0);
  #next = 0;
  readonly #waiting = new Map<string, (r: RawReply) => void>();
  readonly #errors: string[] = [];
  /** Subjects (as latin1) of messages no request was waiting for, from subscribe(). */
  readonly received: string[] = [];
  #pong?: () => void;

  private constructor(
    private readonly sock: net.Socket,
    private readonly inbox: string,
  ) {
    sock.on('data', (d: Buffer) => this.#read(d));
    sock.on('error', () => undefined);
  }

  /** `inbox`: where replies come, one the user may subscribe to (a host may only its own, see auth.ts). */
  static async connect(port: number, creds?: { user: string; pass: string }, inbox = '_INBOX.raw'): Promise<RawNats> {
    const sock = net.connect(port, '127.0.0.1');
    await withDeadline(
      new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject)),
      5000,
      'raw NATS connect',
    );
    const raw = new RawNats(sock, inbox);
    const opts = {
      verbose: false,
      pedantic: false,
      headers: true,
      no_responders: true,
      protocol: 1,
      ...(creds ? { user: creds.user, pass: creds.pass } : {}),
    };
    sock.write(`CONNECT ${JSON.stringify(opts)}\r\nSUB ${inbox}.> 1\r\n`);
    await raw.flush();
    return raw;
  }

  /** Errors the server sent (`-ERR ...`), oldest first. */
  get errors(): readonly string[] {
    return this.#errors;
  }

  /** Resolves once the server has processed everything sent so far. */
  flush(timeoutMs = 5000): Promise<void> {
    const pong = new Promise<void>((resolve) => (this.#pong = resolve));
    this.sock.write('PING\r\n');
    return withDeadline(pong, timeoutMs, 'raw NATS PONG');
  }

  /** Subscribes to `subject`; what arrives is listed in `received`. */
  subscribe(subject: string, sid: number): void {
    this.sock.write(`SUB ${subject} ${sid + 1}\r\n`);
  }

  /** Publishes one message; `subject`, `reply` and `headers` go out byte for byte. */
  publish(subject: Buffer | string, payload: Buffer | string, opts: { reply?: Buffer | string; headers?: Buffer | string } = {}): void {
    const body = Buffer.from(payload);
    const reply = opts.reply === undefined ? [] : [Buffer.from(' '), Buffer.from(opts.reply)];
    if (opts.headers === undefined) {
      this.sock.write(
        Buffer.concat([Buffer.from('PUB '), Buffer.from(subject), ...reply, Buffer.from(` ${body.length}\r\n`), body, Buffer.from('\r\n')]),
      );
      return;
    }
    const hdr = Buffer.from(opts.headers);
    this.sock.write(
      Buffer.concat([
        Buffer.from('HPUB '),
        Buffer.from(subject),
        ...reply,
        Buffer.from(` ${hdr.length} ${hdr.length + body.length}\r\n`),
        hdr,
        body,
        Buffer.from('\r\n'),
      ]),
    );
  }

  /**
   * A request whose reply subject is `<inbox>.<n>` plus `replySuffix` (odd bytes allowed where
   * NATS carries them); resolves with the reply, or undefined if none came within `timeoutMs`.
   */
  async request(
    subject: Buffer | string,
    payload: Buffer | string,
    opts: { headers?: Buffer | string; replySuffix?: Buffer; timeoutMs?: number } = {},
  ): Promise<RawReply | undefined> {
    const reply = Buffer.concat([Buffer.from(`${this.inbox}.${this.#next++}`), opts.replySuffix ?? Buffer.alloc(0)]);
    const key = reply.toString('latin1');
    const got = new Promise<RawReply>((resolve) => this.#waiting.set(key, resolve));
    this.publish(subject, payload, { reply, ...(opts.headers === undefined ? {} : { headers: opts.headers }) });
    try {
      return await withDeadline(got, opts.timeoutMs ?? 10_000, `raw reply on ${key}`);
    } catch {
      return undefined;
    } finally {
      this.#waiting.delete(key);
    }
  }

  close(): void {
    this.sock.destroy();
  }

  #read(d: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, d]);
    for (;;) {
      const eol = this.#buf.indexOf('\r\n');
      if (eol < 0) return;
      const line = this.#buf.subarray(0, eol).toString('latin1');
      const [op, ...args] = line.split(' ');
      if (op === 'MSG' || op === 'HMSG') {
        // MSG <subject> <sid> [reply] <len>; HMSG <subject> <sid> [reply] <hdrlen> <totlen>
        const total = Number(args.at(-1));
        const hdrLen = op === 'HMSG' ? Number(args.at(-2)) : 0;
        const start = eol + 2;
        if (this.#buf.length < start + total + 2) return;
        const frame = this.#buf.subarray(start, start + total);
        this.#buf = this.#buf.subarray(start + total + 2);
        const waiter = this.#waiting.get(args[0] as string);
        if (waiter) waiter({ headers: frame.subarray(0, hdrLen).toString('utf8'), data: Buffer.from(frame.subarray(hdrLen)) });
        else if (this.received.length < 1000) this.received.push(args[0] as string);
        continue;
      }
      this.#buf = this.#buf.subarray(eol + 2);
      if (op === 'PING') this.sock.write('PONG\r\n');
      else if (op === 'PONG') this.#pong?.();
      else if (op === '-ERR') this.#errors.push(line);
    }
  }
}
