import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { createLogger, withDeadline, type ForkyError } from '@forky/base';
import { SchedulerClient, openBuckets, startNatsServer, startService, type NatsServer } from '@forky/bus';
import { ExecRequest, ExecResult, subjects } from '@forky/contract';
import { loadSchedulerConfig, startScheduler, type RunningScheduler } from '@forky/scheduler';

/**
 * The scheduler forwards an exec to its VM's host once and whole: with the client's key when it
 * has one (hostd dedupes exec by key), and a keyless one is never sent again, even when the host
 * does not answer in time. No QEMU: the host is a small fake serving `vm.exec` on its subject.
 */
describe('vm.exec through the scheduler (real nats-server and scheduler, a fake host)', { timeout: 60_000 }, () => {
  const HOST = 'fake-exec-host';
  const VM = 'vm-execfwd00001';
  // No hostd in this process (nor its helpers): only the scheduler and the fake.
  const log = createLogger({ level: (process.env.FORKY_TEST_LOG as 'debug' | undefined) ?? 'warn', name: 'test' });
  let nats: NatsServer;
  let sched: RunningScheduler;
  let nc: NatsConnection;
  let client: SchedulerClient;
  let host: Service;
  /** Every exec request the host got, as it got it. */
  const seen: ExecRequest[] = [];
  let release: () => void = () => undefined;
  const released = new Promise<void>((r) => (release = r));

  before(async () => {
    nats = await startNatsServer();
    sched = await startScheduler(loadSchedulerConfig({ nats: { servers: [nats.url] }, logLevel: 'warn' }), log);
    nc = await connect({ servers: nats.url });
    client = new SchedulerClient(nc, { timeoutMs: 30_000 });
    const buckets = await openBuckets(nc);
    await buckets.locator.put(`vm.${VM}`, JSON.stringify({ host: HOST }));
    host = await startService(
      nc,
      { name: 'fake-hostd', version: '0.0.1', description: 'answers vm.exec only' },
      [
        {
          name: 'vm_exec',
          subject: subjects.host(HOST, 'vm.exec'),
          request: ExecRequest,
          reply: ExecResult,
          handler: async (req) => {
            const r = req as ExecRequest;
            seen.push(r);
            // `hang` outlasts its caller; it ends when the test releases it (or at its own deadline).
            if (r.cmd[0] === 'hang') await withDeadline(released, 20_000, 'the test releasing the hung exec').catch(() => undefined);
            return { exitCode: 0, stdout: `ran ${r.cmd.join(' ')}`, stderr: '' };
          },
        },
      ],
      log,
    );
    await nc.flush();
  });
  after(async () => {
    release();
    await host?.stop();
    await sched?.stop();
    await nc?.close();
    await nats?.stop();
  });

  it("passes the client's key to the host", async () => {
    const r = await client.call('vm.exec', { id: VM, cmd: ['echo', 'keyed'], key: 'exec-fwd-key-01' });
    assert.equal(r.stdout, 'ran echo keyed');
    const got = seen.filter((s) => s.cmd[1] === 'keyed');
    assert.equal(got.length, 1);
    assert.equal(got[0]?.key, 'exec-fwd-key-01');
  });

  it('sends a keyless exec once, and adds no key of its own, when its host does not answer in time', async () => {
    const late = await new SchedulerClient(nc, { timeoutMs: 1_500 })
      .call('vm.exec', { id: VM, cmd: ['hang'] })
      .catch((e: unknown) => e as ForkyError);
    assert.equal((late as ForkyError).code, 'TIMEOUT');
    release();
    // A request after it, answered: anything the scheduler had re-sent of the first was sent before it.
    await client.call('vm.exec', { id: VM, cmd: ['echo', 'after'] });
    const hung = seen.filter((s) => s.cmd[0] === 'hang');
    assert.equal(hung.length, 1, 'the keyless exec reached its host once');
    assert.equal(hung[0]?.key, undefined, 'with no key made up on the way');
  });
});
