#!/usr/bin/env node
import { Command } from 'commander';
import { createLogger, ForkyError } from '@forky/base';
import { loadGatewayConfig } from './config.js';
import { GATEWAY_VERSION, startGateway } from './run.js';

const program = new Command('forky-gateway')
  .description('Forky Pig preview gateway: http://<vmId>-<port>.<domain>/ to guest ports, with a per-VM token')
  .version(GATEWAY_VERSION)
  .option('-c, --config <file>', 'JSON config file (also FORKY_GATEWAY_CONFIG)')
  .option('--nats <urls>', 'NATS server URLs, comma separated (also FORKY_NATS_URL)')
  .option('--listen <host:port>', 'where browsers connect (also FORKY_GATEWAY_LISTEN; default 127.0.0.1:8480)')
  .option('--domain <name>', 'previews are <vmId>-<port>.<domain> (also FORKY_GATEWAY_DOMAIN; default localhost)')
  .option('--data-dir <dir>', 'where the secret is kept (also FORKY_DATA_DIR; default .forky/gateway)')
  .option('--secret-file <file>', 'the 32-byte secret that mints tokens (default <data-dir>/preview-secret; made if missing)')
  .option('--log-level <level>', 'pino log level (also FORKY_LOG_LEVEL)')
  .parse();

const o = program.opts<Record<string, string | undefined>>();
try {
  const config = loadGatewayConfig({
    config: o.config,
    nats: o.nats ? { servers: o.nats.split(',') } : undefined,
    listen: o.listen,
    domain: o.domain,
    dataDir: o.dataDir,
    secretFile: o.secretFile,
    logLevel: o.logLevel,
  });
  const logger = createLogger({ level: config.logLevel, name: 'gateway' });
  const g = await startGateway(config, logger);
  const stop = (): void => void g.stop().finally(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
} catch (e) {
  process.stderr.write(`forky-gateway: ${e instanceof ForkyError ? `${e.code}: ${e.message}` : String(e)}\n`);
  process.exit(1);
}
