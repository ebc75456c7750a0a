import { InvalidArgumentError, type Command } from 'commander';
import { PortForward, type ConnectionFailure, type LocalAddress } from '@forky/sdk';
import { guestText, safeJson } from '../guest-text.js';
import { describeError } from '../describe-error.js';
import type { CliContext } from '../commands/context.js';

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

/** One line per connection that failed (refused, reset, the NATS connection lost). */
export function connectionLine(vm: string, guestPort: number, f: ConnectionFailure): string {
  const what =
    f.error === undefined
      ? f.reason
      : describeError(f.error)
          .replace(/^forky: /, '')
          .trim();
  return `forky: port ${vm}:${guestPort}: connection ${f.connection} from ${f.from} closed: ${guestText(what)}\n`;
}

/** `forky port VM GUESTPORT [--local [ADDR:]PORT]`: local TCP connections to a guest port, over NATS, until Ctrl-C. */
export async function port(cli: CliContext, vm: string, gp: string, o: { local?: string }, cmd: Command): Promise<void> {
  const guestPort = parseGuestPort(gp);
  const local = parseLocal(o.local ?? String(guestPort));
  await cli.withSession(cmd, async (s) => {
    const fwd = await PortForward.listen({
      vm,
      guestPort,
      local,
      open: (body) => s.stream('port.open', body),
      onConnectionError: (f) => process.stderr.write(connectionLine(vm, guestPort, f)),
    });
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
}
