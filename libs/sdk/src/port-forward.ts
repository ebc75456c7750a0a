import net from 'node:net';
import { ForkyError, asForkyError, withDeadline } from '@forky/base';
import { carrySocket, type CarriedStream } from '@forky/bus';

/** How long a stop waits for each connection's stream to end before it drops the rest. */
const STOP_DEADLINE_MS = 5_000;

export interface LocalAddress {
  host: string;
  port: number;
}

/** A carried connection that failed (refused in the guest, reset, the NATS connection lost). */
export interface ConnectionFailure {
  /** 1 for the first connection accepted, and so on. */
  connection: number;
  /** The local peer, `addr:port`. */
  from: string;
  /** What ended it, when no error says more. */
  reason: string;
  error?: ForkyError;
}

export interface PortForwardOptions {
  vm: string;
  guestPort: number;
  local: LocalAddress;
  /** Opens one `port.open` stream. */
  open: (body: { id: string; port: number }) => Promise<CarriedStream>;
  onConnectionError?: (f: ConnectionFailure) => void;
}

/** One accepted connection, and how to stop carrying it. */
interface Carried {
  sock: net.Socket;
  stop: AbortController;
  done: Promise<void>;
}

/**
 * Listens on the local address and carries each accepted TCP connection as one `port.open`
 * stream (STREAMS.md, Ports) with @forky/bus's carrySocket: back-pressure and half-close both
 * ways, so a connection holds at most its window in memory and a slow side stalls only its own.
 */
export class PortForward {
  readonly #o: PortForwardOptions;
  readonly #server: net.Server;
  readonly #live = new Set<Carried>();
  #n = 0;
  #stopping = false;

  private constructor(o: PortForwardOptions) {
    this.#o = o;
    this.#server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => this.#accept(sock));
  }

  /** Listens; a local address already taken fails with CONFLICT. */
  static async listen(o: PortForwardOptions): Promise<PortForward> {
    const f = new PortForward(o);
    await new Promise<void>((resolve, reject) => {
      f.#server.once('error', reject);
      f.#server.listen(o.local.port, o.local.host, () => (f.#server.off('error', reject), resolve()));
    }).catch((e: unknown) => {
      throw new ForkyError('CONFLICT', `cannot listen on ${o.local.host}:${o.local.port}: ${(e as Error).message}`, { cause: e });
    });
    return f;
  }

  get address(): LocalAddress {
    const a = this.#server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** Connections carried now. */
  get connections(): number {
    return this.#live.size;
  }

  /** Stops listening, cancels every stream and waits (within the deadline) for their ends; closes every socket. */
  async close(deadlineMs = STOP_DEADLINE_MS): Promise<void> {
    this.#stopping = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const c of this.#live) c.stop.abort();
    const all = Promise.all([...this.#live].map((c) => c.done));
    await withDeadline(all, deadlineMs, 'the port connections ending').catch(() => undefined);
    for (const c of this.#live) c.sock.destroy(); // their hosts did not answer in time
    await closed;
  }

  #failed(connection: number, from: string, reason: string, e?: unknown): void {
    this.#o.onConnectionError?.({ connection, from, reason, ...(e === undefined ? {} : { error: asForkyError(e) }) });
  }

  #accept(sock: net.Socket): void {
    const n = ++this.#n;
    const from = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    const c: Carried = { sock, stop: new AbortController(), done: Promise.resolve() };
    sock.on('error', () => undefined);
    if (this.#stopping) return void sock.destroy();
    this.#live.add(c);
    c.done = this.#carry(c, n, from).finally(() => this.#live.delete(c));
  }

  async #carry(c: Carried, n: number, from: string): Promise<void> {
    let st: CarriedStream;
    try {
      st = await this.#o.open({ id: this.#o.vm, port: this.#o.guestPort });
    } catch (e) {
      this.#failed(n, from, 'the open failed', e);
      return void c.sock.destroy();
    }
    // Said before the socket closes, so whoever watches both sees the failure first.
    const onFailure = (end: { reason: string; error?: unknown }): void => this.#failed(n, from, end.reason, end.error);
    await carrySocket(c.sock, st, { signal: c.stop.signal, finishMs: STOP_DEADLINE_MS, onFailure });
  }
}
