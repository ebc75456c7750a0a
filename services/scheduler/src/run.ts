import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { DeadlineError, withDeadline, type Logger } from '@forky/base';
import { JobQueue, connectBus, openBuckets, resolveReplicas } from '@forky/bus';
import type { SchedulerConfig } from './config.js';
import { Scheduler } from './scheduler.js';
import { startSchedulerService } from './service.js';
import { HostView } from './host-view.js';
import { subjects } from '@forky/contract';
import { beatParser, type Beat } from './hosts.js';

export const SCHEDULER_VERSION = '0.1.0';

export interface RunningScheduler {
  scheduler: Scheduler;
  nc: NatsConnection;
  service: Service;
  stop(): Promise<void>;
}

/** Start-up attempts before giving up (the process then exits non-zero, for its supervisor). */
const START_ATTEMPTS = 3;

/**
 * Connects and starts serving. Every start-up step has a deadline: a step that hangs fails its
 * attempt, the connection is closed, and the next attempt starts over on a new one.
 */
export async function startScheduler(config: Readonly<SchedulerConfig>, logger: Logger): Promise<RunningScheduler> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(config, logger);
    } catch (err) {
      if (!(err instanceof DeadlineError) || attempt >= START_ATTEMPTS) throw err;
      logger.warn({ err, attempt }, 'a start-up step hung; starting over on a new connection');
    }
  }
}

async function startOnce(config: Readonly<SchedulerConfig>, logger: Logger): Promise<RunningScheduler> {
  const nc = await connectBus({ ...config.nats, name: 'forky-scheduler', logger });
  // Each step is logged and bounded, so a start that hangs says where, and does not hang for good.
  const step = <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    logger.info(what);
    return withDeadline(fn(), config.startStepTimeoutMs, `scheduler start-up: ${what}`);
  };
  try {
    const replicas = resolveReplicas(nc, config.bucketReplicas);
    const buckets = await step('opening buckets', () => openBuckets(nc, { replicas }));
    const feed = { subject: subjects.heartbeats, hostOf: (s: string) => s.split('.').at(-1) };
    const view = new HostView(nc, buckets.hosts, feed, beatParser(logger.child({ component: 'hosts' })), logger);
    await step('reading hosts', () => view.start(config.startStepTimeoutMs / 2));
    const jobs = await step('opening the jobs stream', () =>
      JobQueue.open(nc, { replicas, ackWaitMs: config.jobAckWaitMs, maxDeliver: config.jobMaxDeliver }, logger),
    );
    const scheduler = new Scheduler(nc, buckets, view, jobs, config, logger);
    const service = await step('adding the service', () => startSchedulerService(nc, scheduler, SCHEDULER_VERSION, logger));
    jobs.work(config.jobConcurrency, (d) => scheduler.runJob(d));
    logger.info({ servers: config.nats.servers, replicas }, 'scheduler serving');
    return running(nc, scheduler, service, jobs, view);
  } catch (err) {
    await nc.close().catch(() => undefined);
    throw err;
  }
}

function running(nc: NatsConnection, scheduler: Scheduler, service: Service, jobs: JobQueue, view: HostView<Beat>): RunningScheduler {
  return {
    scheduler,
    nc,
    service,
    async stop() {
      scheduler.stop();
      await service.stop();
      await jobs.stop();
      view.stop();
      await nc.drain();
    },
  };
}
