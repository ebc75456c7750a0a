/**
 * Simulated hosts for the scheduler bench, until SIGTERM. Prints "ready" on stdout once all serve.
 *   node bench/dist/sim-hosts.js --nats URL --prefix P --count N [--answering]
 * By default N hostd in dry-run mode (records only, no QEMU). With --answering, N hosts of our own
 * that answer `vm.boot` at once and beat as hostd does (within 100 ms of a change, without their VM
 * list, and every period with it): the scheduler is then the one doing most of the work, so its own cost
 * shows, where dry-run hostd spends ~8 ms of CPU on each boot.
 */
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { createLogger, newId } from '@forky/base';
import { startEphemeralHostd, type EphemeralHostd } from '@forky/hostd';
import { CONTENT_TYPE, decodeBody, encodeBody, subjects, type Heartbeat, type VmInfo } from '@forky/contract';
import { REPO } from './local.js';

const args = process.argv.slice(2);
const arg = (name: string): string => {
  const v = args[args.indexOf(`--${name}`) + 1];
  if (!v) throw new Error(`--${name} is required`);
  return v;
};

/** A host that answers boots at once; its heartbeats follow hostd's (hostd.ts): a change is told within 100 ms. */
function answeringHost(nc: NatsConnection, id: string): () => void {
  const vms: VmInfo[] = [];
  let soon: NodeJS.Timeout | undefined;
  const beat = (full: boolean): void => {
    if (!full) soon = undefined;
    const hb: Heartbeat = {
      id,
      accel: 'tcg',
      accelReason: 'simulated',
      qemuVersion: '7.2.0',
      cpus: 2,
      memTotalMiB: 1 << 20,
      memFreeMiB: (1 << 20) - vms.length * 256,
      vms: vms.length,
      snapshots: 0,
      images: ['tiny'],
      memCommittedMiB: vms.length * 256,
      childPssMiB: 0,
      ksmSavedMiB: 0,
      gpus: { total: 0, free: 0 },
      ts: Date.now(),
      intervalMs: 2_000,
      instance: `answering-${id}`,
      ...(full ? { vmList: vms } : {}),
      snapshotIds: [],
    };
    nc.publish(subjects.heartbeat(id), JSON.stringify(hb));
  };
  const sub = nc.subscribe(subjects.host(id, 'vm.boot'), {
    callback: (_err, msg) => {
      const { value, format } = decodeBody(msg.data, msg.headers?.get('Content-Type'));
      const req = value as { memMiB?: number; image?: string };
      const vm: VmInfo = {
        id: newId('vm'),
        host: id,
        state: 'running',
        image: req.image ?? 'tiny',
        memMiB: req.memMiB ?? 256,
        cpus: 1,
        accel: 'tcg',
        createdAt: new Date().toISOString(),
      };
      // It holds its latest 100 (older ones taken as destroyed): beats stay the size of a busy host's.
      if (vms.push(vm) > 100) vms.shift();
      soon ??= setTimeout(() => beat(false), 100);
      const h = headers();
      h.set('Content-Type', CONTENT_TYPE[format]);
      msg.respond(encodeBody(vm, format), { headers: h });
    },
  });
  beat(true);
  const every = setInterval(() => beat(true), 2_000);
  return () => {
    clearInterval(every);
    clearTimeout(soon);
    sub.unsubscribe();
  };
}

const count = Number(arg('count'));
const stops: Array<() => Promise<unknown>> = [];
process.on('SIGTERM', () => void Promise.allSettled(stops.map((s) => s())).finally(() => process.exit(0)));
if (args.includes('--answering')) {
  const nc = await connect({ servers: arg('nats'), name: 'sim-hosts' });
  const ends = Array.from({ length: count }, (_, i) => answeringHost(nc, `${arg('prefix')}${i}`));
  stops.push(async () => {
    for (const end of ends) end();
    await nc.close();
  });
} else {
  const logger = createLogger({ level: 'warn', name: 'sim-hosts' });
  const hosts: EphemeralHostd[] = [];
  stops.push(async () => {
    for (const h of hosts) await h.stop().catch(() => undefined);
  });
  for (let i = 0; i < count; i++) {
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
}
process.stdout.write('ready\n');
