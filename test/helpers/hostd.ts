import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createLogger, newId, type Logger } from '@forky/base';
import { HostdClient } from '@forky/bus';
import { loadHostdConfig, startHostd, type Hostd } from '@forky/hostd';
import { IMAGES_DIR, REPO } from './repo.js';

export interface TestHost {
  hostd: Hostd;
  client: HostdClient;
  nc: NatsConnection;
  hostId: string;
  dataDir: string;
  ramDir: string;
  stop(): Promise<void>;
}

export function testLogger(): Logger {
  return createLogger({ level: (process.env.FORKY_TEST_LOG as 'debug' | undefined) ?? 'warn', name: 'test' });
}

/**
 * A real hostd in this process, on its own short data dir (unix socket paths are limited) and
 * its own tmpfs RAM dir. The accelerator probe result is cached beside the images, so only the
 * first host of a run pays for a failing KVM probe.
 */
export async function startTestHost(natsUrl: string, opts: { hostId?: string } = {}): Promise<TestHost> {
  const hostId = opts.hostId ?? newId('h', 6).replace('-', '');
  const dataDir = await fs.mkdtemp(path.join('/tmp', `fk-${hostId}-`));
  const ramDir = path.join('/dev/shm', path.basename(dataDir));
  const config = loadHostdConfig(
    {
      hostId,
      nats: { servers: [natsUrl] },
      dataDir,
      ramDir,
      imagesDir: IMAGES_DIR,
      qemu: { probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json') },
    },
    REPO,
  );
  const hostd = await startHostd(config, testLogger());
  const nc = await connect({ servers: natsUrl, name: 'forky-test-client' });
  const client = new HostdClient(nc, hostId, { timeoutMs: 120_000 });
  return {
    hostd,
    client,
    nc,
    hostId,
    dataDir,
    ramDir,
    async stop() {
      await hostd.stop({ destroyVms: true });
      await nc.close();
      await fs.rm(dataDir, { recursive: true, force: true });
      await fs.rm(ramDir, { recursive: true, force: true });
    },
  };
}
