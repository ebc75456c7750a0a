import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError } from '@forky/base';
import { writeServerConfig } from '@forky/bus';
import type { LocalAuth } from './local-auth.js';
import { spawnDetached, waitForLog } from './procs.js';
import { progress } from './output.js';

/**
 * A local cluster's nats-server is started from one config file that says everything (address,
 * port, JetStream and its store, users, TLS): a reload (new hosts) or a restart (after a crash)
 * changes only what the file changed. The file is also the record of the port the cluster uses:
 * its hostd and scheduler reconnect to that port, and only to it.
 */
export const natsConfOf = (data: string): string => path.join(data, 'auth', 'nats.conf');
const storeOf = (data: string): string => path.join(data, 'nats');

/** The port the cluster's server was given, if it has been started before. */
export async function recordedPort(data: string): Promise<number | undefined> {
  try {
    const port = (JSON.parse(await fs.readFile(natsConfOf(data), 'utf8')) as { port?: unknown }).port;
    return typeof port === 'number' && Number.isInteger(port) && port > 0 ? port : undefined;
  } catch {
    return undefined;
  }
}

/** Writes the server config; true if it changed (a running server must reload it). */
export async function writeNatsConf(data: string, auth: LocalAuth | undefined, port: number): Promise<boolean> {
  // 0700: the config holds the users' passwords.
  await fs.mkdir(path.dirname(natsConfOf(data)), { recursive: true, mode: 0o700 });
  return writeServerConfig(natsConfOf(data), {
    port,
    storeDir: storeOf(data),
    ...(auth ? { auth: auth.users } : {}),
    ...(auth?.tls ? { tls: auth.tls } : {}),
  });
}

export class PortTakenError extends ForkyError {
  override readonly name = 'PortTakenError';
  constructor(port: number, cause?: unknown) {
    super(
      'CONFLICT',
      `port ${port}, where this cluster's hostd and scheduler reconnect, is taken by another process: free it, or \`forky down\` then \`forky up\` for a new port`,
      { cause, details: { port } },
    );
  }
}

/**
 * Starts the server on `port` (the one recorded, or -1 for one the kernel picks) and records the
 * port it got. A recorded port that is taken fails with PortTakenError while services of the
 * cluster run (they know no other port); with none running, a new port is as good.
 */
export async function startLocalNats(
  data: string,
  auth: LocalAuth | undefined,
  port: number | undefined,
  servicesRunning: boolean,
): Promise<{ pid: number; port: number }> {
  const log = path.join(data, 'logs', 'nats.log');
  const attempt = async (p: number): Promise<{ pid: number; port: number } | 'taken'> => {
    await writeNatsConf(data, auth, p);
    const { pid, from } = spawnDetached('nats-server', 'nats-server', ['-c', natsConfOf(data)], log);
    try {
      const m = await waitForLog(
        log,
        /Listening for client connections on [\d.]+:(\d+)[\s\S]*Server is ready/,
        pid,
        15_000,
        'nats-server start',
        from,
      );
      return { pid, port: Number(m[1]) };
    } catch (e) {
      if (/address already in use/.test((e as Error).message)) return 'taken';
      throw e;
    }
  };
  let got = await attempt(port ?? -1);
  if (got === 'taken' && port !== undefined) {
    if (servicesRunning) throw new PortTakenError(port);
    progress(`port ${port} is taken; nothing of this cluster runs, so it takes a new one`);
    got = await attempt(-1);
  }
  if (got === 'taken') throw new ForkyError('INTERNAL', 'nats-server found no free port');
  // The server runs with what the file will say: rewriting it needs no reload.
  await writeNatsConf(data, auth, got.port);
  return got;
}
