/**
 * Simulated hosts for the scheduler bench: N hostd in dry-run mode in this process, until SIGTERM.
 *   node bench/dist/sim-hosts.js --nats URL --prefix P --count N
 * Prints "ready" on stdout once all serve.
 */
import path from 'node:path';
import { createLogger } from '@forky/base';
import { startEphemeralHostd, type EphemeralHostd } from '@forky/hostd';
import { REPO } from './local.js';

const args = process.argv.slice(2);
const arg = (name: string): string => {
  const v = args[args.indexOf(`--${name}`) + 1];
  if (!v) throw new Error(`--${name} is required`);
  return v;
};
const hosts: EphemeralHostd[] = [];
const stop = async (): Promise<void> => {
  for (const h of hosts) await h.stop().catch(() => undefined);
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
const logger = createLogger({ level: 'warn', name: 'sim-hosts' });
for (let i = 0; i < Number(arg('count')); i++) {
  hosts.push(
    await startEphemeralHostd({
      natsUrl: arg('nats'),
      imagesDir: path.join(REPO, '.forky', 'images'),
      logger,
      hostId: `${arg('prefix')}${i}`,
      overrides: { dryRun: true, pool: { size: 0 }, limits: { maxVms: 10_000 } },
    }),
  );
}
process.stdout.write('ready\n');
