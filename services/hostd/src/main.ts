#!/usr/bin/env node
import { Command } from 'commander';
import { createLogger, ForkyError } from '@forky/base';
import { loadHostdConfig } from './config.js';
import { startHostd, HOSTD_VERSION } from './hostd.js';

const program = new Command('forky-hostd')
  .description('Forky Pig host agent: runs and forks VMs on this machine, served on NATS')
  .version(HOSTD_VERSION)
  .option('-c, --config <file>', 'JSON config file (also FORKY_HOSTD_CONFIG)')
  .option('--host-id <id>', 'this host id (also FORKY_HOST_ID; default: hostname)')
  .option('--nats <urls>', 'NATS server URLs, comma separated (also FORKY_NATS_URL)')
  .option('--data-dir <dir>', 'data directory (also FORKY_DATA_DIR)')
  .option('--ram-dir <dir>', 'RAM directory on tmpfs (also FORKY_RAM_DIR)')
  .option('--images-dir <dir>', 'guest images directory (also FORKY_IMAGES_DIR)')
  .option('--accel <accel>', 'auto | kvm | tcg (also FORKY_ACCEL)')
  .option('--log-level <level>', 'pino log level (also FORKY_LOG_LEVEL)')
  .parse();

const o = program.opts<Record<string, string | undefined>>();
try {
  const config = loadHostdConfig({
    config: o.config,
    hostId: o.hostId,
    nats: o.nats ? { servers: o.nats.split(',') } : undefined,
    dataDir: o.dataDir,
    ramDir: o.ramDir,
    imagesDir: o.imagesDir,
    qemu: o.accel ? { accel: o.accel } : undefined,
    logLevel: o.logLevel,
  });
  const logger = createLogger({ level: config.logLevel, name: 'hostd' });
  const hostd = await startHostd(config, logger);
  const stop = (): void => {
    // VMs keep running across a hostd restart; only the service stops.
    void hostd.stop().finally(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
} catch (e) {
  const msg = e instanceof ForkyError ? `${e.code}: ${e.message}` : String(e);
  process.stderr.write(`forky-hostd: ${msg}\n`);
  process.exit(1);
}
