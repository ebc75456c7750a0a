import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import type { KV } from '@nats-io/kv';
import { pollUntil } from '@forky/base';
import { openBuckets, startNatsServer, type NatsServer } from '@forky/bus';
import type { SchedRequestOf, TemplateInfo } from '@forky/contract';
import { FakeHostd } from './fake-hostd.js';
import { startTestScheduler, type TestScheduler } from './scheduler.js';

/**
 * A real nats-server and scheduler over two fake hosts, for the scheduler's template logic. Host
 * calls time out after 2 s, so a fake that holds a reply 3 s loses it.
 */
export interface TemplateCluster {
  nats: NatsServer;
  nc: NatsConnection;
  sched: TestScheduler;
  a: FakeHostd;
  b: FakeHostd;
  templates: KV;
  requests: KV;
  /** A keyed template.create asked again (as a client would) while its answer is a TIMEOUT, until done. */
  createDone(req: SchedRequestOf<'template.create'>): Promise<TemplateInfo>;
  /** The build record under a create's key, as stored (undefined when there is none). */
  buildRecord(key: string): Promise<Record<string, unknown> | undefined>;
  /** Waits until the scheduler sees `host` as alive or not. */
  seen(host: string, alive: boolean): Promise<void>;
  stop(): Promise<void>;
}

export const HOST_CALL_MS = 2_000;

export async function startTemplateCluster(prefix: string): Promise<TemplateCluster> {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url });
  const a = await FakeHostd.start(nc, `${prefix}-a`);
  const b = await FakeHostd.start(nc, `${prefix}-b`);
  const sched = await startTestScheduler(nats.url, { config: { hostTimeoutMs: HOST_CALL_MS, templateReapMs: 600_000 } });
  const { templates, requests } = await openBuckets(nc);
  const seen = async (host: string, alive: boolean): Promise<void> => {
    await pollUntil(
      async () => ((await sched.client.call('hosts', {})).hosts.some((h) => h.id === host && h.alive === alive) ? true : undefined),
      { timeoutMs: 20_000, what: `host ${host} seen ${alive ? 'up' : 'down'}` },
    );
  };
  await seen(a.id, true);
  await seen(b.id, true);
  return {
    nats,
    nc,
    sched,
    a,
    b,
    templates,
    requests,
    async createDone(req) {
      const deadline = Date.now() + 60_000;
      for (;;) {
        try {
          return await sched.client.call('template.create', req, { timeoutMs: 30_000 });
        } catch (e) {
          // Only the wait for the outcome timing out: a job that failed with TIMEOUT is an answer.
          const waited = (e as { code?: string }).code === 'TIMEOUT' && /no answer within/.test((e as Error).message);
          if (!waited || Date.now() > deadline) throw e;
        }
      }
    },
    async buildRecord(key) {
      const e = await templates.get(`build.${key}`);
      return e?.operation === 'PUT' ? (e.json() as Record<string, unknown>) : undefined;
    },
    seen,
    async stop() {
      await sched.stop();
      await a.down();
      await b.down();
      await nc.close();
      await nats.stop();
    },
  };
}
