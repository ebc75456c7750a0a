import net from 'node:net';
import { InvalidArgumentError, type Command } from 'commander';
import { ForkyError, asForkyError, withDeadline } from '@forky/base';
import { carrySocket } from '@forky/bus';
import { guestText, safeJson } from '../guest-text.js';
import { describeError } from '../output.js';
import type { CliStream } from '../streams-io.js';
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
    for (const c of this.#live) c.stop.abort();
    const all = Promise.all([...this.#live].map((c) => c.done));
    await withDeadline(all, deadlineMs, 'the port connections ending').catch(() => undefined);
    for (const c of this.#live) c.sock.destroy(); // their hosts did not answer in time
    await closed;
  }

  #warn(from: string, n: number, what: string): void {
    (this.#o.warn ?? ((l) => process.stderr.write(l)))(
      `forky: port ${this.#o.vm}:${this.#o.guestPort}: connection ${n} from ${from} closed: ${guestText(what)}\n`,
    );
  }

  #accept(sock: net.Socket): void {
    const n = ++this.#n;
    // The peer, kept: a closed socket forgets it.
    const from = `${sock.remoteAddress ?? '?'}:${sock.remotePort ?? '?'}`;
    const c: Carried = { sock, stop: new AbortController(), done: Promise.resolve() };
    // An error (a reset by the local client) is followed by close, which cancels the stream.
    sock.on('error', () => undefined);
    if (this.#stopping) return void sock.destroy();
    this.#live.add(c);
    c.done = this.#carry(c, n, from).finally(() => this.#live.delete(c));
  }

  async #carry(c: Carried, n: number, from: string): Promise<void> {
    const text = (e: unknown): string =>
      describeError(e)
        .replace(/^forky: /, '')
        .trim();
    let st: CliStream;
    try {
      st = await this.#o.open({ id: this.#o.vm, port: this.#o.guestPort });
    } catch (e) {
      this.#warn(from, n, text(e));
      return void c.sock.destroy();
    }
    // Said before the socket closes, so whoever watches both sees the line first.
    const onFailure = (end: { reason: string; error?: unknown }): void =>
      this.#warn(from, n, end.error === undefined ? end.reason : text(asForkyError(end.error)));
    await carrySocket(c.sock, st, { signal: c.stop.signal, finishMs: STOP_DEADLINE_MS, onFailure });
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
