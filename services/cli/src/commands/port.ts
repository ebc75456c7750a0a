import net from 'node:net';
import { InvalidArgumentError, type Command } from 'commander';
import { ForkyError, asForkyError, withDeadline } from '@forky/base';
import { guestText, safeJson } from '../guest-text.js';
import { describeError } from '../output.js';
import { writeOut, type CliStream, type StreamEnd } from '../streams-io.js';
import type { CliContext } from './context.js';

/** How long a stop waits for each connection's stream to end before it drops the rest. */
const STOP_DEADLINE_MS = 5_000;

export interface LocalAddress {
  host: string;
  port: number;
}

/** `--local [ADDR:]PORT` (`[::1]:PORT` for IPv6); no address is 127.0.0.1: a forward is for this machine unless asked. */
export function parseLocal(v: string): LocalAddress {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]:|([^:[\]]+):)?(\d{1,5})$/.exec(v);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new InvalidArgumentError('--local must be [ADDR:]PORT, PORT 0 to 65535 (0: any free port)');
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

export function parseGuestPort(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('GUESTPORT must be a whole number from 1 to 65535');
  return n;
}

export interface PortForwardOptions {
  vm: string;
  guestPort: number;
  local: LocalAddress;
  /** Opens one `port.open` stream (through the scheduler, in the CLI). */
  open: (body: { id: string; port: number }) => Promise<CliStream>;
  /** One line per connection that failed (refused, reset, the NATS connection lost). */
  warn?: (line: string) => void;
}

/** One accepted connection and its stream. */
interface Carried {
  sock: net.Socket;
  /** The peer, kept: a closed socket forgets it. */
  from: string;
  stream: CliStream | undefined;
  /** We cancelled it (a stop, the local side gone): its end says nothing new. */
  ours: boolean;
  done: Promise<void>;
}

/**
 * Listens on the local address and carries each accepted TCP connection as one `port.open`
 * stream (STREAMS.md, Ports). Back-pressure both ways: the socket is paused while the host has
 * granted no input credit, and the stream's credit goes back only as the socket drains, so a
 * connection holds at most its window in memory and a slow side stalls only its own connection.
 */
export class PortForward {
  readonly #o: PortForwardOptions;
  readonly #server: net.Server;
  readonly #live = new Set<Carried>();
  #n = 0;
  #stopping = false;

  private constructor(o: PortForwardOptions) {
    this.#o = o;
    // Half-open: the local client's FIN is passed on as `eof`, and the guest may still answer.
    this.#server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => this.#accept(sock));
  }

  static async listen(o: PortForwardOptions): Promise<PortForward> {
    const f = new PortForward(o);
    await new Promise<void>((resolve, reject) => {
      f.#server.once('error', reject);
      f.#server.listen(o.local.port, o.local.host, () => (f.#server.off('error', reject), resolve()));
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
    for (const c of this.#live) {
      c.ours = true;
      c.stream?.cancel();
    }
    const all = Promise.all([...this.#live].map((c) => c.done));
    await withDeadline(all, deadlineMs, 'the port connections ending').catch(() => undefined);
    for (const c of this.#live) c.sock.destroy(); // their hosts did not answer in time
    await closed;
  }

  #warn(c: Carried, n: number, what: string): void {
    const from = c.from;
    (this.#o.warn ?? ((l) => process.stderr.write(l)))(
      `forky: port ${this.#o.vm}:${this.#o.guestPort}: connection ${n} from ${from} closed: ${guestText(what)}\n`,
    );
  }

  #accept(sock: net.Socket): void {
    const n = ++this.#n;
    const from = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    const c: Carried = { sock, from, stream: undefined, ours: false, done: Promise.resolve() };
    // An error (a reset by the local client) is followed by close, which cancels the stream.
    sock.on('error', () => undefined);
    if (this.#stopping) return void sock.destroy();
    this.#live.add(c);
    c.done = this.#carry(c, n).finally(() => this.#live.delete(c));
  }

  async #carry(c: Carried, n: number): Promise<void> {
    const { sock } = c;
    let st: CliStream;
    try {
      st = await this.#o.open({ id: this.#o.vm, port: this.#o.guestPort });
    } catch (e) {
      this.#warn(
        c,
        n,
        describeError(e)
          .replace(/^forky: /, '')
          .trim(),
      );
      return void sock.destroy();
    }
    c.stream = st;
    if (this.#stopping || sock.destroyed) {
      c.ours = true;
      st.cancel();
    }
    const halves = { in: false, out: false };
    sock.on('close', (hadError) => {
      // The local side is gone before the end (a reset, a destroy): the guest's socket goes too.
      // Both halves closed cleanly: the end is on its way, the guest must get its EOF first.
      if (c.ours || (!hadError && halves.in && halves.out)) return;
      c.ours = true;
      st.cancel();
    });
    this.#pumpIn(sock, st, halves);
    try {
      const end = await this.#pumpOut(sock, st, halves);
      if (!end.ok && !c.ours) {
        this.#warn(c, n, `${end.code}: ${end.message}`);
        return void sock.resetAndDestroy();
      }
      await this.#finish(sock);
    } catch (e) {
      // The NATS connection lost, the host silent: the connection cannot go on.
      if (!c.ours)
        this.#warn(
          c,
          n,
          describeError(asForkyError(e))
            .replace(/^forky: /, '')
            .trim(),
        );
      sock.destroy();
    } finally {
      st.close();
    }
  }

  /** Ends our half and lets what is buffered flush; a peer that keeps its half open past the deadline is dropped. */
  async #finish(sock: net.Socket): Promise<void> {
    if (sock.destroyed) return;
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    sock.end();
    await withDeadline(closed, STOP_DEADLINE_MS, 'the local connection closing').catch(() => sock.destroy());
  }

  /** Socket to stream: one chunk at a time, the socket paused until the host's credit took it; its FIN as `eof`. */
  #pumpIn(sock: net.Socket, st: CliStream, halves: { in: boolean }): void {
    sock.on('data', (b: Buffer) => {
      sock.pause();
      st.write(b).then(
        () => sock.resume(),
        () => undefined, // the stream ended or failed: its end (or error) closes the socket
      );
    });
    sock.on('end', () => {
      halves.in = true;
      void st.closeInput().catch(() => undefined);
    });
    sock.resume();
  }

  /** Stream to socket: the next chunk is taken (and its credit given back) only once the socket drained the last. */
  async #pumpOut(sock: net.Socket, st: CliStream, halves: { out: boolean }): Promise<StreamEnd> {
    for await (const ch of st) {
      if (ch.kind === 'end') return ch.end;
      if (ch.kind === 'eof') {
        halves.out = true;
        sock.end();
      } else if (ch.kind === 'data' && !sock.destroyed) await writeOut(sock, ch.bytes).catch(() => undefined);
    }
    throw new ForkyError('UNAVAILABLE', 'the stream ended without its end message');
  }
}

/** `forky port VM GUESTPORT [--local [ADDR:]PORT]`: local TCP connections to a guest port, over NATS, until Ctrl-C. */
export function registerPort(program: Command, cli: CliContext): void {
  program
    .command('port <vm> <guestport>')
    .description(
      'forward local TCP connections to a port inside a VM (like kubectl port-forward), over NATS through its guest agent, until Ctrl-C',
    )
    .option('--local <[addr:]port>', 'where to listen (default 127.0.0.1:GUESTPORT; port 0: any free port)')
    .action(
      cli.action(async (vm: string, gp: string, o: { local?: string }, cmd: Command) => {
        const guestPort = parseGuestPort(gp);
        const local = parseLocal(o.local ?? String(guestPort));
        await cli.withSession(cmd, async (s) => {
          const fwd = await PortForward.listen({ vm, guestPort, local, open: (body) => s.stream('port.open', body) }).catch(
            (e: unknown) => {
              throw new ForkyError('CONFLICT', `cannot listen on ${local.host}:${local.port}: ${(e as Error).message}`, { cause: e });
            },
          );
          const { host, port } = fwd.address;
          const shown = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
          if (cli.json(cmd)) process.stdout.write(safeJson({ address: host, port, vm, guestPort }) + '\n');
          else process.stdout.write(`forwarding ${shown} -> ${guestText(vm)}:${guestPort}\n`);
          const sig = await new Promise<NodeJS.Signals>((resolve) => {
            process.once('SIGINT', () => resolve('SIGINT'));
            process.once('SIGTERM', () => resolve('SIGTERM'));
          });
          await fwd.close();
          process.exitCode = sig === 'SIGINT' ? 130 : 143;
        });
      }),
    );
}
