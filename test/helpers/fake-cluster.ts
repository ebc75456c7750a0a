import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { FakeHostd } from './fake-hostd.js';
import { startTestScheduler, type TestScheduler } from './scheduler.js';

/** A real nats-server and scheduler over our fake hosts: for the scheduler's own logic, without QEMU. */
export interface FakeCluster {
  nats: NatsServer;
  /** The fake hosts' connection. */
  nc: NatsConnection;
  sched: TestScheduler;
  hosts: FakeHostd[];
  /** Starts a fake host, stopped with the cluster. */
  host(id: string): Promise<FakeHostd>;
  stop(): Promise<void>;
}

export async function startFakeCluster(opts: { config?: Record<string, unknown> } = {}): Promise<FakeCluster> {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url });
  const sched = await startTestScheduler(nats.url, opts.config ? { config: opts.config } : {});
  const hosts: FakeHostd[] = [];
  return {
    nats,
    nc,
    sched,
    hosts,
    async host(id) {
      const h = await FakeHostd.start(nc, id);
      hosts.push(h);
      return h;
    },
    async stop() {
      for (const h of hosts) await h.down().catch(() => undefined);
      await sched.stop();
      await nc.close();
      await nats.stop();
    },
  };
}
