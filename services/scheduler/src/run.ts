import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import type { Logger } from '@forky/base';
import { JobQueue, connectBus, openBuckets, resolveReplicas } from '@forky/bus';
import type { SchedulerConfig } from './config.js';
import { Scheduler } from './scheduler.js';
import { startSchedulerService } from './service.js';
import { HostView } from './host-view.js';
import { Heartbeat, subjects } from '@forky/contract';

export const SCHEDULER_VERSION = '0.1.0';

export interface RunningScheduler {
  scheduler: Scheduler;
  nc: NatsConnection;
  service: Service;
  stop(): Promise<void>;
}

export async function startScheduler(config: Readonly<SchedulerConfig>, logger: Logger): Promise<RunningScheduler> {
  const nc = await connectBus({ ...config.nats, name: 'forky-scheduler', logger });
  const replicas = resolveReplicas(nc, config.bucketReplicas);
  // Each start-up step is logged, so a start that hangs says where.
  logger.info('opening buckets');
  const buckets = await openBuckets(nc, { replicas });
  const view = new HostView(nc, buckets.hosts, { subject: subjects.heartbeats, hostOf: (s) => s.split('.').at(-1) }, parseBeat, logger);
  logger.info('reading hosts');
  await view.start();
  logger.info('opening the jobs stream');
  const jobs = await JobQueue.open(nc, { replicas, ackWaitMs: config.jobAckWaitMs, maxDeliver: config.jobMaxDeliver }, logger);
  const scheduler = new Scheduler(nc, buckets, view, jobs, config, logger);
  const service = await startSchedulerService(nc, scheduler, SCHEDULER_VERSION, logger);
  jobs.work(config.jobConcurrency, (d) => scheduler.runJob(d));
  logger.info({ servers: config.nats.servers, replicas }, 'scheduler serving');
  return {
    scheduler,
    nc,
    service,
    async stop() {
      await service.stop();
      await jobs.stop();
      view.stop();
      await nc.drain();
    },
  };
}

function parseBeat(body: string): Heartbeat | undefined {
  try {
    return Heartbeat.safeParse(JSON.parse(body)).data;
  } catch {
    return undefined;
  }
}
