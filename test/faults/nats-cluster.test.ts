import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { pollUntil } from '@forky/base';
import { HostdClient, JobQueue, SchedulerClient, openBuckets, resolveReplicas, retryTransient } from '@forky/bus';
import { ObjectPartStore, PARTS_BUCKET } from '@forky/bus';
import { BUCKETS, STREAMS } from '@forky/contract';
import { startTestHost, testLogger, type TestHost } from '../helpers/hostd.js';
import { startNatsCluster, type TestCluster } from '../helpers/nats-cluster.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

const STATE_STREAMS = [...Object.values(BUCKETS).map((b) => `KV_${b}`), `OBJ_${PARTS_BUCKET}`, STREAMS.jobs];

/** Counts the reconnects of a connection from now on. */
function reconnects(nc: NatsConnection): { count: number } {
  const seen = { count: 0 };
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'reconnect') seen.count++;
  })();
  return seen;
}

/**
 * NATS faults: a 3-node JetStream cluster with every bucket and the jobs stream at R3. The node
 * that hostd and the scheduler are connected to, and that leads most of the streams, is killed
 * with SIGKILL in the middle of a batch.
 */
describe('a NATS node killed mid-batch on a 3-node cluster (R3 state)', { timeout: 600_000 }, () => {
  let cluster: TestCluster;
  let op: NatsConnection;
  let host: TestHost;
  let sched: TestScheduler;
  let victim: number;

  before(async () => {
    await ensureImageOnce();
    cluster = await startNatsCluster(3);
    op = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    // The state the services use, made at R3 up front, so its leaders can be read before choosing a victim.
    // What hostd and the scheduler choose on their own (`bucketReplicas: auto`) on this cluster.
    assert.equal(resolveReplicas(op, 'auto'), 3);
    await openBuckets(op, { replicas: 3 });
    const jobs = await JobQueue.open(op, { replicas: 3, ackWaitMs: 5000, maxDeliver: 5 }, testLogger());
    await jobs.stop();
    await ObjectPartStore.open(op, 3);
    const jsm = await jetstreamManager(op);
    const leads = new Map<string, number>();
    for (const s of STATE_STREAMS) {
      const leader = await pollUntil(async () => (await jsm.streams.info(s).catch(() => undefined))?.cluster?.leader, {
        timeoutMs: 30_000,
        what: `${s} has a leader`,
      });
      leads.set(leader, (leads.get(leader) ?? 0) + 1);
    }
    const top = [...leads.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] as string;
    victim = cluster.names.indexOf(top);
    // hostd and the scheduler know only the victim's URL: they must find the others on their own.
    const url = cluster.urls[victim] as string;
    host = await startTestHost(url, { hostId: 'nf-h1', overrides: { nats: { servers: [url] } } });
    sched = await startTestScheduler(url, { config: { jobAckWaitMs: 5000, leaseMs: 2000 } });
  });
  after(async () => {
    await sched?.stop().catch(() => undefined);
    await host?.stop().catch(() => undefined);
    await op?.close();
    await cluster?.stop();
  });

  it('the batch completes, no acknowledged snapshot is lost, and every client reconnects', async (t) => {
    const client = new SchedulerClient(op, { timeoutMs: 300_000 });
    const hostc = new HostdClient(op, 'nf-h1', { timeoutMs: 120_000 });
    await pollUntil(async () => ((await client.call('hosts', {})).hosts.some((h) => h.alive) ? true : undefined), {
      timeoutMs: 30_000,
      what: 'host reported in',
    });
    const parent = await client.call('vm.boot', { key: 'nf-boot-parent' });
    await hostc.call('vm.exec', { id: parent.id, cmd: ['/bin/sh', '-c', 'echo acked > /run/mark'] });
    // Acknowledged before the fault: a snapshot and its parts in the object store.
    const s0 = await client.call('snapshot.create', { vm: parent.id, resume: true, key: 'nf-snapshot-s0' });
    await hostc.call('snapshot.publish', { id: s0.id });
    const before = (await hostc.call('vm.list', {})).vms.length;

    const hostRe = reconnects(host.hostd.nc);
    const schedRe = reconnects(sched.running.nc);
    const key = 'nf-batch-node-killed';
    const items = [
      { source: s0.id, count: 2 },
      { source: parent.id, count: 2, resumeParent: true },
      { source: s0.id, count: 2 },
      { source: parent.id, count: 2, resumeParent: true },
    ];
    const sent = client.call('batch', { key, items }).catch((e: unknown) => e as Error);
    await pollUntil(async () => ((await hostc.call('vm.list', {})).vms.length > before ? true : undefined), {
      timeoutMs: 60_000,
      intervalMs: 5,
      what: 'the batch under way',
    });
    const killedAt = Date.now();
    await cluster.kill(victim);

    const r = await sent;
    if (r instanceof Error) assert.fail(`the batch failed: ${r.message}`);
    const batchMs = Date.now() - killedAt;
    for (const [i, item] of r.results.entries())
      assert.ok(item.ok, `item ${i}: ${item.ok ? '' : `${item.error.code} ${item.error.message}`}`);
    const ok = r.results.flatMap((x) => (x.ok ? [x.result] : []));
    const children = ok.flatMap((x) => x.children.map((c) => c.id));
    assert.equal(new Set(children).size, 8);
    assert.equal((await hostc.call('vm.list', {})).vms.length, before + 8, 'each child made once');

    // Every snapshot acknowledged (s0, and the live forks' snapshots in the reply) is in the
    // lineage and the locator, and s0's parts in the object store are whole.
    const acked = [s0.id, ...ok.map((x) => x.snapshot.id)];
    const tree = await client.call('snapshot.tree', {});
    for (const id of acked) {
      assert.ok(
        tree.nodes.some((n) => n.id === id),
        `${id} in the lineage`,
      );
      assert.equal((await client.call('snapshot.show', { id })).id, id, `${id} located`);
    }
    t.diagnostic(`batch answered ${batchMs} ms after the kill`);
    // A reader, like any client, tries again while the cluster settles (a stream info or a consumer create can time out).
    const read = <T>(what: string, fn: () => Promise<T>): Promise<T> => retryTransient(what, fn, { timeoutMs: 60_000 });
    const parts = await read('open the parts store', () => new Objm(op).open(PARTS_BUCKET));
    const manifest = JSON.parse(
      new TextDecoder().decode((await read('manifest', () => parts.getBlob(`manifest.${s0.id}`))) ?? new Uint8Array()),
    ) as {
      chain?: Array<{ digest: string }>;
      state?: { digest: string };
      ram?: { digest: string };
    };
    const digests = [...(manifest.chain ?? []), manifest.state, manifest.ram]
      .filter((p): p is { digest: string } => !!p)
      .map((p) => p.digest);
    assert.ok(digests.length >= 3, 'the manifest names its parts');
    for (const d of digests) {
      // Parts are stored sparse-encoded: whole means every byte the object store recorded for it.
      const info = await read('part info', () => parts.info(`sha256-${d}`));
      const blob = await read('part', () => parts.getBlob(`sha256-${d}`));
      assert.ok(info && blob, `part ${d.slice(0, 12)} present`);
      assert.equal(blob.length, info.size, `part ${d.slice(0, 12)} has all its bytes`);
      assert.equal(
        createHash('sha256').update(blob).digest('base64url'),
        info.digest.replace(/^SHA-256=/, '').replace(/=+$/, ''),
        `part ${d.slice(0, 12)} whole`,
      );
    }

    // The services moved to the surviving nodes by themselves and go on working.
    assert.ok(hostRe.count >= 1 && schedRe.count >= 1, `hostd reconnected ${hostRe.count}, scheduler ${schedRe.count}`);
    assert.notEqual(host.hostd.nc.getServer(), cluster.urls[victim]?.replace('nats://', ''));
    const h = (await client.call('hosts', {})).hosts.find((x) => x.id === 'nf-h1');
    assert.ok(h?.alive && Date.parse(h.lastSeen) > killedAt, 'heartbeats go on after the kill');
    const later = await client.call('fork', { source: s0.id, count: 1, key: 'nf-fork-after' });
    assert.equal((await hostc.call('vm.exec', { id: later.children[0]?.id as string, cmd: ['cat', '/run/mark'] })).stdout.trim(), 'acked');

    // The killed node comes back and catches up: every stream has 3 current replicas again.
    await cluster.restart(victim);
    const jsm = await jetstreamManager(op);
    await pollUntil(
      async () => {
        for (const s of STATE_STREAMS) {
          const c = (await jsm.streams.info(s)).cluster;
          if (!c?.leader || (c.replicas ?? []).length !== 2 || !(c.replicas ?? []).every((x) => x.current)) return undefined;
        }
        return true;
      },
      { timeoutMs: 60_000, intervalMs: 250, what: 'streams whole again' },
    );
    t.diagnostic(
      `killed ${cluster.names[victim]} (the services' node, leader of the most streams) mid-batch; the batch of 4 items finished ${batchMs} ms later with 8 children, each made once; acknowledged snapshots kept: ${acked.length}/${acked.length}, s0's ${digests.length} parts whole; reconnects: hostd ${hostRe.count}, scheduler ${schedRe.count}; the node rejoined and every stream has 3 current replicas`,
    );
  });
});
