import path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { ForkyError, pollUntil } from '@forky/base';
import { request } from '@forky/bus';
import { GatewayUrlReply, gatewaySubject } from '@forky/contract';
import { guestText } from '../guest-text.js';
import { prepareLocalAuth } from '../local-auth.js';
import { connectTo, readCluster, recordProcess, resolveConnection } from '../local-cluster.js';
import { natsConfOf, recordedPort, writeNatsConf } from '../local-nats.js';
import { printJson } from '../output.js';
import { REPO } from '../paths.js';
import { isAlive, spawnDetached, waitForLog } from '../procs.js';
import type { CliContext } from './context.js';
import { parseGuestPort } from './port.js';

const GATEWAY_MAIN = path.join(REPO, 'services', 'gateway', 'dist', 'main.js');
/** The gateway's start: read its secret, connect, listen. */
const GATEWAY_START_MS = 30_000;

/** `--listen [ADDR:]PORT` of `forky gateway`; no address is 127.0.0.1: previews are for this machine unless asked. */
function parseListen(v: string): string {
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[^:[\]\s]+):)?(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new InvalidArgumentError('--listen must be [ADDR:]PORT');
  return `${m[1] ?? '127.0.0.1'}:${m[2]}`;
}

/**
 * Starts forky-gateway beside the local cluster `forky up` made, as the cluster's `gateway` user, and
 * records it in cluster.json (so `forky down` stops it). A cluster made before the gateway existed gets
 * that user now: nats-server reloads its users on SIGHUP.
 */
async function startLocalGateway(data: string, listen: string, domain: string): Promise<{ pid: number; listen: string }> {
  const cluster = await readCluster(data);
  if (!cluster) throw new ForkyError('INVALID_STATE', `no local cluster in ${data}: run \`forky up --detach\` first`);
  const running = cluster.processes.find((p) => p.role === 'gateway' && isAlive(p.pid));
  if (running) throw new ForkyError('CONFLICT', `a gateway already runs for ${data} (pid ${running.pid}); \`forky down\` stops it`);
  let authFile: string | undefined;
  if (cluster.authFile) {
    const { auth, changed } = await prepareLocalAuth(data, [], cluster.caFile !== undefined);
    const port = await recordedPort(data);
    const nats = cluster.processes.find((p) => p.role === 'nats' && isAlive(p.pid));
    if (changed && !nats) throw new ForkyError('INVALID_STATE', `nats-server of ${data} is not running (${natsConfOf(data)})`);
    authFile = auth.gatewayFile;
    if (changed && port && nats && (await writeNatsConf(data, auth, port))) {
      process.kill(nats.pid, 'SIGHUP');
      // The reload is the server's own business: the gateway's user works once it can connect.
      const server = cluster.server;
      const caFile = cluster.caFile;
      await pollUntil(
        () =>
          connectTo({ server, authFile: auth.gatewayFile, ...(caFile ? { caFile } : {}) }).then(
            (nc) => nc.close().then(() => true),
            () => undefined,
          ),
        { timeoutMs: 10_000, what: 'nats-server taking the gateway user' },
      );
    }
  }
  const log = path.join(data, 'logs', 'gateway.log');
  const env = {
    ...process.env,
    FORKY_NATS_URL: cluster.server,
    FORKY_DATA_DIR: path.join(data, 'gateway'),
    FORKY_GATEWAY_LISTEN: listen,
    FORKY_GATEWAY_DOMAIN: domain,
    FORKY_LOG_LEVEL: process.env.FORKY_LOG_LEVEL ?? 'info',
    ...(authFile ? { FORKY_NATS_AUTH_FILE: authFile } : {}),
    ...(cluster.caFile ? { FORKY_NATS_CA: cluster.caFile } : {}),
  };
  const child = spawnDetached('the gateway', process.execPath, [GATEWAY_MAIN], log, env);
  await recordProcess(data, { role: 'gateway', pid: child.pid });
  const m = await waitForLog(log, /"listen":"([^"]+)".*"gateway serving"/, child.pid, GATEWAY_START_MS, 'the gateway', child.from).catch(
    (e: unknown) => {
      throw new ForkyError('UNAVAILABLE', `the gateway did not start: ${(e as Error).message}; see ${log}`, { cause: e });
    },
  );
  return { pid: child.pid, listen: m[1] as string };
}

/** `forky preview VM PORT` (a preview's URL and token) and `forky gateway` (the local gateway that serves them). */
export function registerPreview(program: Command, cli: CliContext): void {
  program
    .command('preview <vm> <port>')
    .description('the browser URL of a port inside a VM, through forky-gateway (`forky gateway` starts one locally)')
    .action(
      cli.action(async (vm: string, p: string, _o: unknown, cmd: Command) => {
        const port = parseGuestPort(p);
        const g = cli.globals(cmd);
        const nc = await connectTo(await resolveConnection(g.server, cli.dataOf(cmd)));
        try {
          const raw = await request(nc, gatewaySubject('gateway.url'), { id: vm, port }, { format: 'json', timeoutMs: g.requestTimeout });
          const r = GatewayUrlReply.safeParse(raw);
          if (!r.success) throw new ForkyError('INTERNAL', 'gateway.url: the reply is not {url, token}');
          if (cli.json(cmd)) printJson(r.data);
          // The one link a browser needs: the gateway trades the token in it for a cookie, and drops it from the URL.
          else process.stdout.write(`${guestText(r.data.url)}?forky_token=${r.data.token}\n`);
        } catch (e) {
          if (e instanceof ForkyError && e.code === 'UNAVAILABLE' && /no responders/i.test(e.message))
            throw new ForkyError('UNAVAILABLE', 'no forky-gateway answers: start one (`forky gateway`, or forky-gateway)', { cause: e });
          throw e;
        } finally {
          await nc.close();
        }
      }),
    );

  program
    .command('gateway')
    .description('start forky-gateway beside the local cluster (`forky down` stops it): HTTP and WebSocket previews of guest ports')
    .option('--listen <[addr:]port>', 'where browsers connect', parseListen, '127.0.0.1:8480')
    .option('--domain <name>', 'previews are <vmId>-<port>.<domain>; *.localhost needs no DNS', 'localhost')
    .action(
      cli.action(async (o: { listen: string; domain: string }, cmd: Command) => {
        const g = await startLocalGateway(cli.dataOf(cmd), o.listen, o.domain);
        if (cli.json(cmd)) printJson(g);
        else process.stdout.write(`gateway up: http://<vmId>-<port>.${o.domain}:${g.listen.split(':').at(-1)}/ (pid ${g.pid})\n`);
      }),
    );
}
