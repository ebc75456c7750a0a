import fs from 'node:fs/promises';
import path from 'node:path';
import { newId, type Logger } from '@forky/base';
import { loadHostdConfig } from './config.js';
import { startHostd, type Hostd } from './hostd.js';

export interface EphemeralHostd {
  hostd: Hostd;
  hostId: string;
  dataDir: string;
  ramDir: string;
  /** Stops serving, destroys every VM and snapshot, removes the directories. */
  stop(): Promise<void>;
}

/**
 * A hostd on fresh temporary directories (short paths: unix sockets are limited to 107 bytes),
 * for tests, benchmarks and demos. Everything it made is removed by stop().
 */
export async function startEphemeralHostd(opts: {
  natsUrl: string;
  imagesDir: string;
  logger: Logger;
  hostId?: string;
  probeCacheFile?: string;
  overrides?: Record<string, unknown>;
}): Promise<EphemeralHostd> {
  const hostId = opts.hostId ?? newId('h', 6).replace('-', '');
  const dataDir = await fs.mkdtemp(path.join('/tmp', `fk-${hostId}-`));
  // mkdtemp makes it 0700; QEMU, once it has dropped to its own user, must pass through it (not list it).
  await fs.chmod(dataDir, 0o711);
  const ramDir = path.join('/dev/shm', path.basename(dataDir));
  const remove = async (): Promise<void> => {
    await fs.rm(dataDir, { recursive: true, force: true });
    await fs.rm(ramDir, { recursive: true, force: true });
  };
  try {
    const config = loadHostdConfig({
      hostId,
      nats: { servers: [opts.natsUrl] },
      dataDir,
      ramDir,
      imagesDir: opts.imagesDir,
      ...(opts.probeCacheFile ? { qemu: { probeCacheFile: opts.probeCacheFile } } : {}),
      ...opts.overrides,
    });
    const hostd = await startHostd(config, opts.logger);
    return {
      hostd,
      hostId,
      dataDir,
      ramDir,
      async stop() {
        await hostd.stop({ destroyVms: true });
        await remove();
      },
    };
  } catch (e) {
    await remove();
    throw e;
  }
}
