import { connect } from '@nats-io/transport-node';
import type { ConnectionOptions, NatsConnection } from '@nats-io/nats-core';
import { SchedulerClient } from '@forky/bus';
import { loadSchedulerConfig, startScheduler, type RunningScheduler } from '@forky/scheduler';
import { testLogger } from './hostd.js';

export interface TestScheduler {
  running: RunningScheduler;
  client: SchedulerClient;
  nc: NatsConnection;
  stop(): Promise<void>;
}

/** A real scheduler in this process, and a client connection to call it through NATS. */
export async function startTestScheduler(
  natsUrl: string,
  opts: { nats?: Record<string, unknown>; config?: Record<string, unknown>; clientOptions?: Partial<ConnectionOptions> } = {},
): Promise<TestScheduler> {
  const sched = await startScheduler(
    loadSchedulerConfig({ nats: { servers: [natsUrl], ...opts.nats }, logLevel: 'warn', ...opts.config }),
    testLogger(),
  );
  const nc = await connect({ servers: natsUrl, ...opts.clientOptions });
  return {
    running: sched,
    client: new SchedulerClient(nc, { timeoutMs: 300_000 }),
    nc,
    async stop() {
      await sched.stop();
      await nc.close();
    },
  };
}
