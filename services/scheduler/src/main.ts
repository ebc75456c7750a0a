#!/usr/bin/env node
import { Command } from 'commander';
import { createLogger, ForkyError } from '@forky/base';
import { loadSchedulerConfig } from './config.js';
import { startScheduler, SCHEDULER_VERSION } from './run.js';

const program = new Command('forky-scheduler')
  .description('Forky Pig scheduler: stateless, places boots and forks on hosts; run as many as you like')
  .version(SCHEDULER_VERSION)
  .option('-c, --config <file>', 'JSON config file (also FORKY_SCHEDULER_CONFIG)')
  .option('--nats <urls>', 'NATS server URLs, comma separated (also FORKY_NATS_URL)')
  .option('--log-level <level>', 'pino log level (also FORKY_LOG_LEVEL)')
  .parse();

const o = program.opts<Record<string, string | undefined>>();
try {
  const config = loadSchedulerConfig({ config: o.config, nats: o.nats ? { servers: o.nats.split(',') } : undefined, logLevel: o.logLevel });
  const logger = createLogger({ level: config.logLevel, name: 'scheduler' });
  const s = await startScheduler(config, logger);
  const stop = (): void => void s.stop().finally(() => process.exit(0));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
} catch (e) {
  process.stderr.write(`forky-scheduler: ${e instanceof ForkyError ? `${e.code}: ${e.message}` : String(e)}\n`);
  process.exit(1);
}
