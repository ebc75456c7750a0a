import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { createLogger } from '@forky/base';
import { HostdClient, startNatsServer } from '@forky/bus';
import { startEphemeralHostd } from '@forky/hostd';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** nats-server + one hostd on temp dirs + a client; the image is built first if missing. */
export async function startLocal(logLevel: 'warn' | 'info' = 'warn') {
  const imagesDir = path.join(REPO, '.forky', 'images');
  await promisify(execFile)('bash', [path.join(REPO, 'images', 'tiny', 'build.sh'), imagesDir], { maxBuffer: 16 << 20 });
  const nats = await startNatsServer();
  const logger = createLogger({ level: logLevel, name: 'forky' });
  const host = await startEphemeralHostd({
    natsUrl: nats.url,
    imagesDir,
    logger,
    probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json'),
  });
  const nc = await connect({ servers: nats.url, name: 'forky-bench' });
  const client = new HostdClient(nc, host.hostId, { timeoutMs: 300_000 });
  return {
    nats,
    host,
    client,
    nc,
    async stop() {
      await host.stop();
      await nc.close();
      await nats.stop();
    },
  };
}
