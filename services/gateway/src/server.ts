import net from 'node:net';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, asForkyError, type Logger } from '@forky/base';
import { carrySocket, openStream, type ClientStream } from '@forky/bus';
import { subjects } from '@forky/contract';
import type { GatewayConfig } from './config.js';
import { cookieToken, parseHead, queryToken, readHead, single } from './head.js';
import { refuse, response } from './reply.js';
import { routeOf, type Target } from './route.js';
import { tokenMatches } from './token.js';

export interface PreviewServerOptions {
  nc: NatsConnection;
  config: Readonly<GatewayConfig>;
  secret: Buffer;
  logger: Logger;
}

/** A live connection: its socket, and how to stop its stream. */
interface Live {
  sock: net.Socket;
  stop: AbortController;
}

/**
 * The HTTP side of the gateway. It reads only each connection's first request head: enough to know
 * the VM and port (Host) and that the caller holds the VM's token. Then it opens a `port.open` stream
 * to that guest port, pushes the head back, and carries the connection raw both ways (carrySocket):
 * keep-alive, pipelining and any Upgrade (WebSocket) are the guest server's business, not ours.
 */
export class PreviewServer {
  readonly #o: PreviewServerOptions;
  readonly #server: net.Server;
  readonly #live = new Set<Live>();
  readonly #log: Logger;
  #n = 0;

  constructor(o: PreviewServerOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'http' });
    this.#server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => this.#accept(sock));
    // Beyond it, the kernel's backlog holds new connections and node drops the excess: memory stays bounded.
    this.#server.maxConnections = o.config.maxConnections;
  }

  listen(): Promise<net.AddressInfo> {
    const at = this.#o.config.listen;
    const colon = at.lastIndexOf(':');
    const host = at.slice(0, colon).replace(/^\[|\]$/g, '');
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(Number(at.slice(colon + 1)), host, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as net.AddressInfo);
      });
    });
  }

  get connections(): number {
    return this.#live.size;
  }

  /** Stops listening and ends every connection's stream; sockets still open after `ms` are dropped. */
  async close(ms = 5_000): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const l of this.#live) l.stop.abort();
    const gone = [...this.#live].map((l) => new Promise<void>((resolve) => (l.sock.destroyed ? resolve() : l.sock.once('close', resolve))));
    const timer = setTimeout(() => this.#live.forEach((l) => l.sock.destroy()), ms).unref();
    await Promise.all(gone);
    clearTimeout(timer);
    await closed;
  }

  #accept(sock: net.Socket): void {
    const live: Live = { sock, stop: new AbortController() };
    const n = ++this.#n;
    this.#live.add(live);
    sock.on('error', () => undefined); // a reset by the peer: close follows
    sock.once('close', () => this.#live.delete(live));
    // A connection silent both ways for idleMs goes: a forgotten tab holds no stream for ever.
    sock.setTimeout(this.#o.config.idleMs, () => sock.destroy());
    this.#serve(live, n).catch((e: unknown) => {
      this.#log.error({ err: e, conn: n }, 'connection failed');
      sock.destroy();
    });
  }

  async #serve(live: Live, n: number): Promise<void> {
    const { sock } = live;
    const { config } = this.#o;
    const got = await readHead(sock, config.headMaxBytes, config.headTimeoutMs);
    if (!got.ok) {
      if (got.why === 'too-big') refuse(sock, 431, 'request head too large');
      else if (got.why === 'timeout') refuse(sock, 408, 'no request head in time');
      else sock.destroy();
      return;
    }
    const head = parseHead(got.bytes.subarray(0, got.headLength));
    if (!head) return refuse(sock, 400, 'malformed request head');
    const target = routeOf(single(head, 'host'), config.domain);
    if (!target) return refuse(sock, 400, `no preview host: use <vmId>-<port>.${config.domain}`);
    // The token is checked before anything goes to NATS: a caller without one costs the cluster nothing.
    const query = queryToken(head.target);
    const given = query?.token ?? single(head, 'x-forky-token') ?? cookieToken(head);
    if (!tokenMatches(this.#o.secret, target.vm, given)) {
      this.#log.info({ conn: n, vm: target.vm, port: target.port, given: given !== undefined }, 'refused: no valid token');
      return refuse(sock, 401, 'a valid preview token is needed (forky preview VM PORT)');
    }
    if (query) {
      // The token leaves the URL (history, Referer) for a cookie this host alone gets.
      const cookie = `forky_token=${query.token}; HttpOnly; SameSite=Lax; Path=/`;
      return refuse(sock, 302, '', { Location: query.rest, 'Set-Cookie': cookie });
    }
    await this.#carry(live, n, target, got.bytes);
  }

  async #carry(live: Live, n: number, target: Target, bytes: Buffer): Promise<void> {
    const { sock } = live;
    let st: ClientStream;
    try {
      st = await openStream(
        this.#o.nc,
        subjects.sched('port.open'),
        { id: target.vm, port: target.port },
        {
          timeoutMs: this.#o.config.openTimeoutMs,
        },
      );
    } catch (e) {
      const fe = asForkyError(e);
      this.#log.info({ conn: n, ...target, code: fe.code, msg: fe.message }, 'port.open failed');
      if (fe.code === 'NOT_FOUND') return refuse(sock, 404, `VM ${target.vm} not found`);
      return refuse(sock, 502, `cannot reach ${target.vm} port ${target.port}: ${fe.code}`);
    }
    const end = await carrySocket(sock, st, {
      head: bytes,
      signal: live.stop.signal,
      // Only the code of the host's reason: its message may carry what the guest said.
      failReply: (reason) => response(502, `${target.vm} port ${target.port}: ${reason.replace(/[^A-Z0-9_].*$/s, '') || 'failed'}`),
    });
    if (!end.ok) this.#log.info({ conn: n, ...target, reason: end.reason.slice(0, 300) }, 'connection ended in failure');
  }
}

/** Thrown when the listening address cannot be had. */
export const listenError = (listen: string, e: unknown): ForkyError =>
  new ForkyError('CONFLICT', `cannot listen on ${listen}: ${(e as Error).message}`, { cause: e });
