import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import {
  HostdClient,
  SchedulerClient,
  inboxPrefixOf,
  newClusterAuth,
  startNatsServer,
  type ClusterAuth,
  type NatsServer,
} from '@forky/bus';
import { BUCKETS, subjects, type VmInfo } from '@forky/contract';
import { refused } from '../helpers/errors.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, SCHEDULER_MAIN, hostdEnv, logLines, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'hostile-h1';
/** A second host's user: what a compromised host may write, it writes. */
const ROGUE = 'hostile-h2';
/** The request of issue 15: an unknown key with a newline in its name (`\n` in the JSON text). */
const NEWLINE_KEY = '{"image":"tiny","a\\nb":1}';
const dec = new TextDecoder();

/**
 * Issue 15, item 1: one request whose unknown key has a newline in its name killed the scheduler
 * or a hostd (the key went into a NATS header unescaped), and so did a locator entry of `{}`.
 * Both services run as their own processes here, so a crash is an exit, not a failed test runner.
 */
describe('a hostile request or KV entry gets a typed answer and kills no service', { timeout: 180_000 }, () => {
  let dir: string;
  let auth: ClusterAuth;
  let nats: NatsServer;
  let op: NatsConnection;
  let hostd: ServiceProc;
  let sched: ServiceProc;
  let host: HostdClient;
  let scheduler: SchedulerClient;
  let vm: VmInfo;
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));
  const as = (c: { user: string; pass: string }): Promise<NatsConnection> =>
    connect({ servers: nats.url, user: c.user, pass: c.pass, inboxPrefix: inboxPrefixOf(c.user) });

  /** Both processes still run and answer a real request. */
  const bothServe = async (): Promise<void> => {
    for (const p of [hostd, sched])
      assert.deepEqual([p.child.exitCode, p.child.signalCode], [null, null], `${path.basename(p.log)}: the process exited`);
    assert.equal((await host.call('host.info', {}, { timeoutMs: 5000 })).id, HOST, 'hostd still answers');
    assert.deepEqual(
      (await scheduler.call('hosts', {}, { timeoutMs: 5000 })).hosts.map((h) => h.id),
      [HOST],
      'the scheduler still answers, and sees only the real host',
    );
  };
  /** A raw request as `forky req` or `nats req` sends it; a service that died sends nothing back. */
  const raw = (subject: string, body: string | Uint8Array): Promise<Msg> =>
    op.request(subject, body, { timeout: 5000 }).catch((e: unknown) => {
      const exits = [hostd, sched]
        .map((p) => `${path.basename(p.log, '.log')} exit ${p.child.exitCode ?? p.child.signalCode ?? 'none'}`)
        .join(', ');
      throw new Error(`${subject}: no reply (${(e as Error).message}; ${exits})`, { cause: e });
    });

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-hostile-'));
    auth = newClusterAuth([HOST, ROGUE]);
    nats = await startNatsServer({ auth });
    op = await as(auth.operator);
    host = new HostdClient(op, HOST, { timeoutMs: 30_000 });
    scheduler = new SchedulerClient(op, { timeoutMs: 30_000 });
    // A dry-run host: the defect is in the request path, not in QEMU.
    const hostdConfig = path.join(dir, 'hostd.json');
    await fs.writeFile(hostdConfig, JSON.stringify({ dryRun: true, pool: { size: 0 }, heartbeatMs: 500 }));
    const hostCreds = auth.hosts[HOST] as { user: string; pass: string };
    hostd = await spawnService(
      HOSTD_MAIN,
      {
        ...hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: path.join(dir, 'data'), ramDir: ramDir() }),
        FORKY_HOSTD_CONFIG: hostdConfig,
        FORKY_NATS_USER: hostCreds.user,
        FORKY_NATS_PASS: hostCreds.pass,
      },
      path.join(dir, 'hostd.log'),
      () =>
        host.call('host.info', {}, { timeoutMs: 1000 }).then(
          () => true,
          () => false,
        ),
    );
    sched = await spawnService(
      SCHEDULER_MAIN,
      { FORKY_NATS_URL: nats.url, FORKY_NATS_USER: auth.scheduler.user, FORKY_NATS_PASS: auth.scheduler.pass, FORKY_LOG_LEVEL: 'info' },
      path.join(dir, 'scheduler.log'),
      () =>
        scheduler.call('hosts', {}, { timeoutMs: 1000 }).then(
          (r) => r.hosts.some((h) => h.id === HOST && h.alive),
          () => false,
        ),
    );
    vm = await host.call('vm.boot', {});
  });
  after(async () => {
    await sched?.kill().catch(() => undefined);
    await hostd?.kill().catch(() => undefined);
    await op?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  it('the 26-byte request is BAD_REQUEST from the scheduler and from a hostd, with a one-line header', async (t) => {
    for (const subject of [subjects.sched('vm.boot'), subjects.host(HOST, 'vm.list')]) {
      const msg = await raw(subject, NEWLINE_KEY);
      assert.equal(msg.headers?.get('Nats-Service-Error-Code'), '400', `${subject}: an error status`);
      const header = msg.headers?.get('Nats-Service-Error') ?? '';
      assert.doesNotMatch(header, /[\p{Cc}]/u, `${subject}: the error header is one line of printable text`);
      const reply = JSON.parse(dec.decode(msg.data)) as { error: { code: string; message: string } };
      assert.equal(reply.error.code, 'BAD_REQUEST');
      // The key is named, escaped as JSON would: the caller can see which key it was.
      assert.ok(reply.error.message.includes('"a\\nb"'), `${subject}: the message names the key escaped: ${reply.error.message}`);
      t.diagnostic(`${subject}: ${header}`);
    }
    await bothServe();
  });

  it("a `{}` locator entry written with a host's credentials: vm show is NOT_FOUND, and both still serve", async () => {
    const rogue = await as(auth.hosts[ROGUE] as { user: string; pass: string });
    try {
      const locator = await new Kvm(rogue).open(BUCKETS.locator);
      const ghost = 'vm-zzzzzzzzzzzz';
      await locator.put(`vm.${ghost}`, '{}');
      const e = await refused(scheduler.call('vm.show', { id: ghost }, { timeoutMs: 5000 }));
      assert.equal(e.code, 'NOT_FOUND', e.message);
      // A locator entry that is not JSON, or names no valid host, is as absent as `{}`.
      await locator.put(`vm.${ghost}`, new Uint8Array([0xff, 0x7b, 0x0a]));
      assert.equal((await refused(scheduler.call('vm.show', { id: ghost }, { timeoutMs: 5000 }))).code, 'NOT_FOUND');
      await locator.put(`vm.${ghost}`, JSON.stringify({ host: 'no\nsuch host' }));
      assert.equal((await refused(scheduler.call('vm.show', { id: ghost }, { timeoutMs: 5000 }))).code, 'NOT_FOUND');
      await locator.delete(`vm.${ghost}`);
      // A lineage entry that is not a node leaves the tree as it was.
      const lineage = await new Kvm(rogue).open(BUCKETS.lineage);
      await lineage.put('snap-zzzzzzzzzzzz', '{}');
      assert.deepEqual((await scheduler.call('snapshot.tree', {}, { timeoutMs: 5000 })).nodes, []);
      await lineage.delete('snap-zzzzzzzzzzzz');
      // Each bad entry was logged once, as one bounded line that says where it is.
      const logged = await logLines(sched.log, 'a bad entry was ignored');
      assert.ok(
        logged.some((l) => l.where === `${BUCKETS.locator}/vm.${ghost}`),
        JSON.stringify(logged).slice(0, 300),
      );
      assert.ok(logged.some((l) => String(l.where).includes('snap-zzzzzzzzzzzz')));
      assert.ok(logged.every((l) => JSON.stringify(l).length < 1000));
      // The real VM is still found through the locator.
      assert.equal((await scheduler.call('vm.show', { id: vm.id }, { timeoutMs: 5000 })).id, vm.id);
      await bothServe();
    } finally {
      await rogue.close();
    }
  });
});
