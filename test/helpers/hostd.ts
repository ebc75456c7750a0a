import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { ConnectionOptions, NatsConnection } from '@nats-io/nats-core';
import { createLogger, type Logger } from '@forky/base';
import { HostdClient } from '@forky/bus';
import { startEphemeralHostd, type Hostd } from '@forky/hostd';
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
 * A real hostd in this process on its own temp dirs, and a client connection. The accelerator
 * probe result is cached beside the images, so only the first host of a run pays for a failing
 * KVM probe.
 */
export async function startTestHost(
  natsUrl: string,
  opts: { hostId?: string; overrides?: Record<string, unknown>; clientOptions?: Partial<ConnectionOptions> } = {},
): Promise<TestHost> {
  const host = await startEphemeralHostd({
    natsUrl,
    imagesDir: IMAGES_DIR,
    logger: testLogger(),
    probeCacheFile: path.join(REPO, '.forky', 'accel-probe.json'),
    ...(opts.hostId ? { hostId: opts.hostId } : {}),
    ...(opts.overrides ? { overrides: opts.overrides } : {}),
  });
  const nc = await connect({ servers: natsUrl, name: 'forky-test-client', ...opts.clientOptions });
  return {
    ...host,
    client: new HostdClient(nc, host.hostId, { timeoutMs: 120_000 }),
    nc,
    async stop() {
      await host.stop();
      await nc.close();
    },
  };
}
