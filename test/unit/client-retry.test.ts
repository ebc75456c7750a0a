import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { DeadlineError, ForkyError, delay, silentLogger } from '@forky/base';
import {
  SchedulerClient,
  callerDeadline,
  isResendable,
  startNatsServer,
  startService,
  type EndpointDef,
  type NatsServer,
  type RetryNotice,
} from '@forky/bus';
import { RemoteError, schedContract, subjects, type SchedEndpoint } from '@forky/contract';

const keyOf = (body: unknown): string | undefined => (body as { key?: string }).key;

const VM = {
  id: 'vm-aaaaaaaaaaaa',
  host: 'h1',
  state: 'running',
  image: 'tiny',
  memMiB: 256,
  cpus: 1,
  accel: 'tcg',
  createdAt: '2026-01-01T00:00:00.000Z',
} as const;

/**
 * A fake scheduler of our own on a real nats-server: it counts what it is delivered, and on
 * `dropFirst` endpoints leaves the first delivery unanswered (its reply is lost to the caller).
 */
class FakeScheduler {
  readonly deliveries = new Map<string, unknown[]>();
  private release: () => void = () => undefined;
  private readonly held = new Promise<void>((r) => (this.release = r));

  constructor(private readonly behave: Partial<Record<SchedEndpoint, (n: number, req: unknown) => Promise<unknown>>>) {}

  async start(nc: NatsConnection): Promise<void> {
    const eps: EndpointDef[] = Object.entries(this.behave).map(([name, fn]) => {
      const e = name as SchedEndpoint;
      return {
        name: name.replace('.', '-'),
        subject: subjects.sched(e),
        request: schedContract[e].request,
        reply: schedContract[e].reply,
        handler: async (req: unknown) => {
          const seen = [...(this.deliveries.get(e) ?? []), req];
          this.deliveries.set(e, seen);
          return fn(seen.filter((r) => keyOf(r) === keyOf(req)).length, req);
        },
      };
    });
    await startService(nc, { name: 'fake-scheduler', version: '0.0.1', description: 'retry test' }, eps, silentLogger());
  }

  /** Never answers: the caller's reply is lost. Answered (to nobody) when the test ends. */
  hold(): Promise<never> {
    return this.held.then(() => Promise.reject(new ForkyError('UNAVAILABLE', 'released')));
  }

  count(e: SchedEndpoint): number {
    return this.deliveries.get(e)?.length ?? 0;
  }

  stop(): void {
    this.release();
  }
}

describe('the client retries reads and keyed requests only, after a lost reply only', { timeout: 30_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  const notices: RetryNotice[] = [];
  let fake: FakeScheduler;
  const client = (): SchedulerClient =>
    new SchedulerClient(nc, { timeoutMs: 300, retry: { attempts: 4, backoffMs: () => 10, onRetry: (n) => notices.push(n) } });

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    fake = new FakeScheduler({
      'vm.list': async (n) => (n === 1 ? fake.hold() : { vms: [VM] }),
      'vm.boot': async (n, req) => {
        if (n > 1) return VM;
        if (keyOf(req)?.startsWith('boot-late')) {
          // As the scheduler waiting on a job's outcome: TIMEOUT when the caller's deadline runs out.
          await delay(Math.max(0, (callerDeadline() ?? Date.now()) - Date.now()));
          throw new DeadlineError('request boot-late (ask again with the same key for its outcome)', 300);
        }
        return fake.hold();
      },
      'vm.destroy': async () => fake.hold(),
      // The exec itself timed out in the guest: a reply, with code TIMEOUT.
      'vm.exec': async () => Promise.reject(new DeadlineError('the command in the guest', 2000)),
    });
    await fake.start(nc);
  });
  after(async () => {
    fake.stop();
    await nc.close();
    await nats.stop();
  });

  it('classifies by the contract table and the key', () => {
    assert.equal(isResendable('vm.list', {}), true);
    assert.equal(isResendable('snapshot.tree', {}), true);
    assert.equal(isResendable('vm.exec', { id: VM.id, cmd: ['true'] }), false);
    assert.equal(isResendable('vm.exec', { id: VM.id, cmd: ['true'], key: 'exec-12345678' }), true);
    assert.equal(isResendable('vm.destroy', { id: VM.id }), false);
  });

  it('a read whose reply was lost is asked again, and answered', async () => {
    notices.length = 0;
    const r = await client().call('vm.list', {});
    assert.deepEqual(
      r.vms.map((v) => v.id),
      [VM.id],
    );
    assert.equal(fake.count('vm.list'), 2);
    assert.deepEqual(
      notices.map((n) => [n.endpoint, n.key, n.error.code]),
      [['vm.list', undefined, 'TIMEOUT']],
    );
  });

  it('a keyed request whose reply was lost is sent again under the same key', async () => {
    notices.length = 0;
    const r = await client().call('vm.boot', { key: 'boot-retry-0001' });
    assert.equal(r.id, VM.id);
    const keys = (fake.deliveries.get('vm.boot') ?? []).map((b) => (b as { key?: string }).key);
    assert.deepEqual(keys, ['boot-retry-0001', 'boot-retry-0001']);
    assert.equal(notices.length, 1);
  });

  it('a remote TIMEOUT that comes as the deadline runs out is a lost reply: a keyed request is asked again', async () => {
    notices.length = 0;
    const r = await client().call('vm.boot', { key: 'boot-late-0001' });
    assert.equal(r.id, VM.id);
    const keys = (fake.deliveries.get('vm.boot') ?? []).map(keyOf).filter((k) => k === 'boot-late-0001');
    assert.equal(keys.length, 2);
    assert.equal(notices.length, 1);
    assert.equal(notices[0]?.error.code, 'TIMEOUT');
  });

  it('a keyless write whose reply was lost is never sent again', async () => {
    notices.length = 0;
    const e = await client()
      .call('vm.destroy', { id: VM.id })
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    assert.ok(e instanceof DeadlineError, `a lost reply: ${String(e)}`);
    assert.equal(fake.count('vm.destroy'), 1, 'delivered once');
    assert.equal(notices.length, 0);
  });

  it('a remote TIMEOUT is a reply: not retried, even when keyed', async () => {
    notices.length = 0;
    const e = await client()
      .call('vm.exec', { id: VM.id, cmd: ['sleep', '5'], timeoutMs: 2000, key: 'exec-retry-0001' })
      .then(
        () => undefined,
        (x: unknown) => x,
      );
    assert.ok(e instanceof RemoteError, String(e));
    assert.equal(e.code, 'TIMEOUT');
    assert.equal(fake.count('vm.exec'), 1, 'ran once');
    assert.equal(notices.length, 0);
  });

  it('no responders: a read is tried again up to its attempts; a keyless write once', async () => {
    notices.length = 0;
    await assert.rejects(client().call('snapshot.list', {}), (e: unknown) => e instanceof ForkyError && e.code === 'UNAVAILABLE');
    assert.equal(notices.length, 3);
    notices.length = 0;
    await assert.rejects(client().call('vm.pause', { id: VM.id }), (e: unknown) => e instanceof ForkyError && e.code === 'UNAVAILABLE');
    assert.equal(notices.length, 0);
  });
});
