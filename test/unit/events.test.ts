import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, silentLogger, withDeadline } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { VmEvent, subjects } from '@forky/contract';
import { NatsEventSink } from '@forky/hostd/internal';
import { Forky } from '@forky/sdk';
import { hostFor } from '../helpers/engine-host.js';
import { boot, fork } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { CLI } from '../helpers/cli-run.js';

const ev = (over: Partial<VmEvent> = {}): VmEvent => ({
  v: 1,
  kind: 'ready',
  at: new Date().toISOString(),
  host: 'h1',
  vm: 'vm-aaaaaaaaaaaa',
  ...over,
});

/** A sink that keeps what it is given (each checked against the contract); `until` waits for one, within 5 s. */
function recorder(): {
  events: VmEvent[];
  publish(e: VmEvent): void;
  of(vm: string): string[];
  until(pred: (e: VmEvent) => boolean): Promise<VmEvent>;
} {
  const events: VmEvent[] = [];
  const waiting = new Set<{ pred: (e: VmEvent) => boolean; resolve: (e: VmEvent) => void }>();
  return {
    events,
    publish(e) {
      events.push(VmEvent.parse(e));
      for (const w of waiting) {
        if (!w.pred(e)) continue;
        waiting.delete(w);
        w.resolve(e);
      }
    },
    of: (vm) => events.filter((e) => e.vm === vm).map((e) => e.kind),
    until(pred) {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return withDeadline(new Promise<VmEvent>((resolve) => waiting.add({ pred, resolve })), 5000, 'the event');
    },
  };
}

describe('events: the contract', () => {
  it('is strict and bounded', () => {
    assert.equal(VmEvent.safeParse(ev()).success, true);
    assert.equal(VmEvent.safeParse({ ...ev(), extra: 1 }).success, false, 'strict');
    assert.equal(VmEvent.safeParse(ev({ v: 2 as 1 })).success, false, 'versioned');
    assert.equal(VmEvent.safeParse(ev({ reason: 'x'.repeat(1024) })).success, true);
    assert.equal(VmEvent.safeParse(ev({ reason: 'é'.repeat(513) })).success, false, 'reason: at most 1 KiB of UTF-8');
    assert.equal(VmEvent.safeParse(ev({ children: Array.from({ length: 1001 }, () => 'vm-aaaaaaaaaaaa') })).success, false);
    const labels = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    assert.equal(VmEvent.safeParse(ev({ labels })).success, false, 'at most 32 labels, as a VM has');
    assert.equal(VmEvent.safeParse(ev({ labels: { tier: 'web' } })).success, true);
    assert.equal(subjects.event('h1', 'failed'), 'forky.v1.events.h1.failed');
    assert.throws(() => subjects.event('h1.*', 'failed'), 'a host id with a wildcard is no subject token');
  });
});

describe('events: the engine says what happens to its VMs (dry run)', { concurrency: true }, () => {
  it('boot, pause, resume, snapshot, fork, a crash and destroys, each once and in order', async (t) => {
    const sink = recorder();
    const h = await hostFor(t, { events: sink });
    const vm = await boot(h, { labels: { tier: 'web' } });
    await h.engine.pause(vm.id);
    await h.engine.resume(vm.id);
    // A snapshot that leaves the VM paused says so; a fork that resumes it says that.
    const snap = await h.engine.snapshot({ vm: vm.id, resume: false });
    const f = await fork(h, vm.id, 2, { resumeParent: true });
    assert.deepEqual(sink.of(vm.id), ['created', 'ready', 'paused', 'resumed', 'snapshot', 'paused', 'snapshot', 'resumed', 'forked']);
    const forked = sink.events.find((e) => e.kind === 'forked');
    assert.deepEqual(
      forked?.children,
      f.children.map((c) => c.id),
    );
    assert.equal(forked?.snapshot, f.snapshot.id);
    assert.equal(sink.events.find((e) => e.kind === 'snapshot')?.snapshot, snap.id);
    assert.equal(f.snapshot.parentSnapshot, snap.id);
    assert.equal(sink.events.filter((e) => e.kind === 'snapshot')[1]?.parent, snap.id, 'a snapshot names its lineage parent');
    const [c0, c1] = f.children.map((c) => c.id) as [string, string];
    for (const c of [c0, c1]) {
      assert.deepEqual(sink.of(c), ['created', 'ready']);
      assert.equal(sink.events.find((e) => e.vm === c)?.parent, f.snapshot.id);
    }
    h.runtime.crash(h.engine.show(c0).pid as number);
    const failed = await sink.until((e) => e.vm === c0 && e.kind === 'failed');
    assert.match(failed.reason ?? '', /exited unexpectedly/);
    assert.equal(failed.state, 'failed');
    await h.engine.destroy(c0);
    await h.engine.destroy(c1);
    assert.deepEqual(sink.of(c0), ['created', 'ready', 'failed', 'destroyed']);
    assert.deepEqual(sink.of(c1), ['created', 'ready', 'destroyed']);
    for (const e of sink.events) assert.equal(e.host, 'h-test');
    // Every event of the VM and of what came of it carries its labels (children inherit them).
    for (const e of sink.events) assert.deepEqual(e.labels, { tier: 'web' }, `${e.kind} ${e.vm}`);
  });

  it('a boot undone after its record was written is created then failed; one refused before says nothing', async (t) => {
    const sink = recorder();
    const h = await hostFor(t, { events: sink });
    h.plan.fail('layers.importImage');
    await refused(boot(h));
    assert.equal(sink.events.length, 0, 'nothing was made');
    h.plan.fail('runtime.boot');
    await refused(boot(h));
    assert.deepEqual(
      sink.events.map((e) => e.kind),
      ['created', 'failed'],
    );
    assert.match(sink.events[1]?.reason ?? '', /its boot failed/);
    assert.equal(sink.events[0]?.vm, sink.events[1]?.vm);
  });

  it('a sink that throws does not fail the operation', async (t) => {
    const h = await hostFor(t, {
      events: {
        publish: () => {
          throw new Error('broken sink');
        },
      },
    });
    const vm = await boot(h);
    assert.equal((await h.engine.destroy(vm.id)).state, 'destroyed');
  });
});

describe('events on a real nats-server', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
  });
  after(async () => {
    await nc?.close();
    await nats?.stop();
  });

  it('the SDK refuses bad filters naming the field, before subscribing', () => {
    const forky = Forky.fromConnection(nc);
    const bad = (o: Parameters<Forky['events']>[0], field: string): void => {
      assert.throws(
        () => forky.events(o),
        (e: unknown) => e instanceof ForkyError && e.code === 'BAD_REQUEST' && e.details?.field === field,
      );
    };
    bad({ kinds: ['started' as 'ready'] }, 'kinds');
    bad({ kinds: [] }, 'kinds');
    bad({ vm: 'vm-x' }, 'vm');
    bad({ host: 'H.>' }, 'host');
    bad({ maxPending: 0 }, 'maxPending');
  });

  it('the CLI prints one escaped line per event until Ctrl-C', async () => {
    const p = spawn(process.execPath, [CLI, 'events', '--server', nats.url, '--data', '/nonexistent-forky-data', '--kind', 'failed'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    let err = '';
    p.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
    const body = JSON.stringify(ev({ kind: 'failed', state: 'failed', reason: 'guest said \x1b[31mboom\nnext' }));
    // No event says the CLI has subscribed: publish until its first line shows, within a deadline.
    const deadline = Date.now() + 15_000;
    while (!out.includes('\n')) {
      assert.ok(Date.now() < deadline, `no line from forky events: ${err}`);
      nc.publish(subjects.event('h1', 'ready'), JSON.stringify(ev()));
      nc.publish(subjects.event('h1', 'failed'), body);
      await new Promise((r) => setTimeout(r, 200));
    }
    const line = out.split('\n')[0] as string;
    assert.match(line, /^\S+Z failed {4}vm-aaaaaaaaaaaa h1 state=failed reason=guest said /);
    assert.ok(!line.includes('\x1b'), 'no raw escape reaches the terminal');
    assert.ok(line.endsWith('\\x1b[31mboom\\x0anext'), line);
    assert.ok(!out.includes(' ready '), 'only the kind asked for');
    p.kill('SIGINT');
    assert.equal(await withDeadline(exited, 10_000, 'forky events exiting'), 130);
  });

  it('the sink publishes JSON on the kind subject, refuses bad bodies, and drops while the connection is down', async () => {
    const own = await connect({ servers: nats.url, reconnectTimeWait: 60_000 });
    const sink = new NatsEventSink(own, 'h1', silentLogger());
    const sub = nc.subscribe('forky.v1.events.h1.>', { max: 1 });
    await nc.flush();
    sink.publish(ev({ reason: 'x'.repeat(2000), kind: 'failed' }));
    sink.publish(ev());
    const [m] = await withDeadline(
      (async () => {
        const got = [];
        for await (const x of sub) got.push(x);
        return got;
      })(),
      5000,
      'the event',
    );
    assert.equal(m?.subject, 'forky.v1.events.h1.ready');
    const got = VmEvent.parse(JSON.parse(m?.string() ?? ''));
    assert.deepEqual(got, ev({ at: got.at }), 'the body as published: JSON, nothing added');
    assert.deepEqual([sink.counts.sent, sink.counts.invalid], [1, 1]);
    // Down: the sink hears the disconnect and drops rather than letting nats.js buffer without bound.
    const down = (async () => {
      for await (const s of own.status()) if (s.type === 'disconnect') return;
    })();
    await nats.stop();
    await withDeadline(down, 10_000, 'the disconnect');
    // The sink's own status loop was told first; let its microtasks run.
    await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 500; i++) sink.publish(ev());
    assert.deepEqual([sink.counts.sent, sink.counts.dropped], [1, 500]);
    await own.close();
  });
});
