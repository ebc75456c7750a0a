import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { withDeadline } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { VmEvent, subjects } from '@forky/contract';
import { Forky, type EventStream, type Vm } from '@forky/sdk';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';
import { ensureImageOnce } from '../helpers/repo.js';

/** What a reader saw, in order; `until` resolves when it has seen what a predicate wants (no polling). */
class Seen<T> {
  readonly items: T[] = [];
  #waiters: Array<{ pred: (items: T[]) => boolean; resolve: () => void }> = [];

  push(x: T): void {
    this.items.push(x);
    this.#waiters = this.#waiters.filter((w) => (w.pred(this.items) ? (w.resolve(), false) : true));
  }

  until(pred: (items: T[]) => boolean, what: string, ms = 20_000): Promise<void> {
    if (pred(this.items)) return Promise.resolve();
    return withDeadline(new Promise<void>((resolve) => this.#waiters.push({ pred, resolve })), ms, what);
  }
}

const kindsOf = (events: VmEvent[], vm: string): string[] => events.filter((e) => e.vm === vm).map((e) => e.kind);
const HOST = 'ev-a';

/**
 * VM and snapshot events on NATS from a real hostd (QEMU under TCG): what the SDK's iterator and
 * a raw `nats sub 'forky.v1.events.>'` see of a boot, pause, resume, live fork, destroy and a
 * QEMU killed under a VM.
 */
describe('VM events on NATS (real hostd, QEMU, nats-server)', { timeout: 180_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let forky: Forky;
  let raw: NatsConnection;
  let stream: EventStream;
  let lazy: EventStream;
  let failedOnly: EventStream;
  const stop = new AbortController();
  const sdk = new Seen<VmEvent>();
  const wire = new Seen<{ subject: string; body: unknown }>();
  let reading: Promise<void>;
  let vm: Vm | undefined;
  let children: Vm[] = [];

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: HOST });
    sched = await startTestScheduler(nats.url);
    forky = await Forky.connect({ servers: nats.url, data: '/nonexistent-forky-data' });
    raw = await connect({ servers: nats.url, name: 'events-test-raw' });
    // What `nats sub 'forky.v1.events.>'` does: JSON bodies, as they are.
    const sub = raw.subscribe(subjects.events);
    void (async () => {
      for await (const m of sub) {
        let body: unknown;
        try {
          body = JSON.parse(m.string());
        } catch {
          body = m.string();
        }
        wire.push({ subject: m.subject, body });
      }
    })();
    await raw.flush();
    stream = forky.events({ signal: stop.signal });
    lazy = forky.events({ maxPending: 2 });
    await stream.ready();
    await lazy.ready();
    reading = (async () => {
      for await (const e of stream) sdk.push(e);
    })();
  });

  after(async () => {
    stop.abort();
    lazy?.close();
    failedOnly?.close();
    for (const c of children) await c.destroy().catch(() => undefined);
    await vm?.destroy().catch(() => undefined);
    await raw?.close();
    await forky?.close();
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it('a malformed body is skipped and counted, never thrown at the reader', async () => {
    raw.publish(subjects.event(HOST, 'ready'), '{"v":1,"kind":"ready","at":"not a time","host":"ev-a"}');
    raw.publish(subjects.event(HOST, 'ready'), 'not json');
    await wire.until((w) => w.length >= 2, 'the two bad messages on the wire');
    // The SDK's connection got them too once a round trip on it is done.
    await stream.ready();
    assert.equal(stream.malformed, 2);
    assert.equal(sdk.items.length, 0);
    wire.items.length = 0;
  });

  it('boot, pause, resume, a live fork of 2 and a destroy come in order, with the children named', async () => {
    const t0 = performance.now();
    vm = await forky.vms.create({ memMiB: 256 });
    const id = vm.id;
    await vm.pause();
    await vm.resume();
    const out = await vm.fork({ count: 2, live: true });
    children = out.children;
    const [c0, c1] = children.map((c) => c.id) as [string, string];
    await children[0]?.destroy();
    await sdk.until((s) => kindsOf(s, c0).includes('destroyed'), 'the child destroyed event');

    assert.deepEqual(kindsOf(sdk.items, id), ['created', 'ready', 'paused', 'resumed', 'snapshot', 'forked']);
    for (const c of [c0, c1]) assert.deepEqual(kindsOf(sdk.items, c).slice(0, 2), ['created', 'ready'], `child ${c}`);
    assert.deepEqual(kindsOf(sdk.items, c0), ['created', 'ready', 'destroyed']);
    const snap = sdk.items.find((e) => e.kind === 'snapshot');
    const forked = sdk.items.find((e) => e.kind === 'forked');
    assert.equal(snap?.snapshot, out.snapshot.id);
    assert.equal(forked?.snapshot, out.snapshot.id);
    assert.deepEqual([...(forked?.children ?? [])].sort(), [c0, c1].sort());
    assert.equal(forked?.state, 'running', 'a live fork leaves its source running');
    // Each child was made (and running) before the fork said it was done.
    const at = (pred: (e: VmEvent) => boolean): number => sdk.items.findIndex(pred);
    for (const c of [c0, c1]) assert.ok(at((e) => e.vm === c && e.kind === 'ready') < at((e) => e.kind === 'forked'));
    for (const e of sdk.items) {
      assert.equal(e.host, HOST);
      if (e.vm === c0 || e.vm === c1) assert.equal(e.parent, out.snapshot.id, 'a child names its source snapshot');
    }
    const ready = sdk.items.find((e) => e.vm === id && e.kind === 'ready');
    assert.deepEqual([ready?.state, ready?.image], ['running', 'tiny']);

    // The raw subscription saw the same bodies, on each kind's own subject, and they parse with the contract.
    await wire.until((w) => w.length >= sdk.items.length, 'the raw subscription catching up');
    assert.deepEqual(
      wire.items.map((w) => w.body),
      sdk.items,
    );
    for (const w of wire.items) {
      const e = VmEvent.parse(w.body);
      assert.equal(w.subject, `forky.v1.events.${HOST}.${e.kind}`);
    }
    // A reader that never reads holds 2 and counts the rest as dropped.
    assert.equal(lazy.dropped, sdk.items.length - 2);
    assert.ok(performance.now() - t0 < 60_000, 'within a minute');
  });

  it('a VM whose QEMU is killed is failed, with the reason; a filtered stream sees only that', async () => {
    const c1 = children[1] as Vm;
    failedOnly = forky.events({ kinds: ['failed'], vm: c1.id });
    await failedOnly.ready();
    const only = new Seen<VmEvent>();
    const onlyReading = (async () => {
      for await (const e of failedOnly) only.push(e);
    })();
    const pid = (await c1.refresh()).pid;
    assert.ok(pid, 'the child has a QEMU process');
    process.kill(pid, 'SIGKILL');
    await sdk.until((s) => kindsOf(s, c1.id).includes('failed'), 'the failed event');
    const failed = sdk.items.find((e) => e.vm === c1.id && e.kind === 'failed');
    assert.equal(failed?.state, 'failed');
    assert.match(failed?.reason ?? '', /exited unexpectedly/);
    await only.until((o) => o.length >= 1, 'the filtered stream');
    await c1.destroy();
    await sdk.until((s) => kindsOf(s, c1.id).includes('destroyed'), 'the failed child destroyed');
    assert.deepEqual(kindsOf(sdk.items, c1.id), ['created', 'ready', 'failed', 'destroyed']);
    // Its destroyed event (another kind) never reached the filtered stream.
    failedOnly.close();
    await withDeadline(onlyReading, 5000, 'the filtered loop ending on close');
    assert.deepEqual(
      only.items.map((e) => [e.vm, e.kind]),
      [[c1.id, 'failed']],
    );
    children = [];
  });

  it('aborting the signal ends the loop', async () => {
    stop.abort();
    await withDeadline(reading, 5000, 'the SDK loop ending on abort');
  });
});
