import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, delay, pollUntil, withDeadline } from '@forky/base';
import { openStream, request, safeHeaders, startNatsServer, type ClientStream, type NatsServer, type StreamChunk } from '@forky/bus';
import { subjects, type GuestEndpoint } from '@forky/contract';
import { GuestStreams } from '@forky/hostd/internal';
import { BRIDGE_HOST, BRIDGE_VM, drain, startBridge, type BridgeFixture } from '../helpers/bridge-fixture.js';
import { FakeSession } from '../helpers/fake-guest.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

const HOST = BRIDGE_HOST;
const VM = BRIDGE_VM;
const IDLE_MS = 1500;

const bytesOf = (chunks: StreamChunk[], kind?: string): number =>
  chunks.reduce((n, c) => n + ('bytes' in c && (!kind || c.kind === kind) ? c.bytes.length : 0), 0);
const endOf = (chunks: StreamChunk[]): StreamChunk & { kind: 'end' } => chunks.at(-1) as StreamChunk & { kind: 'end' };

describe('streams over NATS: hostd bridge and ClientStream (real nats-server, fake guest)', { timeout: 120_000 }, () => {
  let hostNc: NatsConnection;
  let client: NatsConnection;
  let session: FakeSession;
  let streams: GuestStreams;
  const open = (endpoint: GuestEndpoint, body: Record<string, unknown>, window?: number): Promise<ClientStream> =>
    openStream(client, subjects.host(HOST, endpoint), body, { keepaliveMs: 300, silenceMs: 4000, ...(window ? { window } : {}) });
  const bridgeOf = (s: ClientStream) => {
    const b = streams.registry.get(s.ref.sid);
    assert.ok(b, 'the host holds the stream');
    return b;
  };

  let fixture: BridgeFixture | undefined;
  /** The VMs each activity report named (engine.touch in hostd: a VM's idle rule counts from it). */
  const activity: string[] = [];
  /** Work under way per VM (engine.work in hostd: a VM's idle rule waits for it). */
  const working = new Map<string, number>();
  const workOn = (id: string): (() => void) => {
    working.set(id, (working.get(id) ?? 0) + 1);
    return () => working.set(id, (working.get(id) ?? 0) - 1);
  };
  const workNow = (): number => working.get(VM) ?? 0;
  before(async () => {
    fixture = await startBridge([HOST, 'h2'], {
      idleMs: IDLE_MS,
      keepaliveMs: 300,
      cancelGraceMs: 1000,
      onActivity: (id) => activity.push(id),
      work: workOn,
    });
    ({ hostNc, client, session, streams } = fixture);
  });
  after(() => fixture?.stop());

  it('delivers chunks in order with seq, and the exit code', async (t) => {
    const s = await open('exec.start', { id: VM, cmd: ['chunks', '20', '10000'] });
    assert.equal(s.pid, 4242);
    const chunks = await withDeadline(drain(s), 10_000, 'the stream');
    const seqs = chunks.map((c) => c.seq);
    assert.ok(
      seqs.every((q, i) => i === 0 || q > (seqs[i - 1] as number)),
      'seq rises',
    );
    assert.deepEqual(chunks[0], { kind: 'event', seq: 1, event: { type: 'started', pid: 4242 } });
    const data = chunks.filter((c) => c.kind === 'stdout' || c.kind === 'stderr');
    assert.deepEqual(
      data.map((c) => ('bytes' in c ? c.bytes[0] : -1)),
      Array.from({ length: 20 }, (_, k) => k),
    );
    assert.equal(bytesOf(chunks, 'stderr'), 4 * 10000);
    assert.deepEqual(endOf(chunks).end, { ok: true, exitCode: 0, signal: null, timedOut: false });
    t.diagnostic(`${chunks.length} chunks (${bytesOf(chunks)} bytes) in seq order ${seqs[0]}..${seqs.at(-1)}, end exit 0`);
  });

  it("tells of its VM's activity as bytes move, at most once a second per stream", async () => {
    const mark = activity.length;
    const t0 = Date.now();
    const s = await open('exec.start', { id: VM, cmd: ['chunks', '20', '10000'] });
    await withDeadline(drain(s), 10_000, 'the stream');
    const said = activity.slice(mark);
    assert.ok(said.length >= 1, 'its output is activity');
    assert.ok(said.length <= 1 + Math.floor((Date.now() - t0) / 1000), `${said.length} reports for 20 chunks`);
    assert.deepEqual(new Set(said), new Set([VM]));
  });

  it('a stream and a one-shot call are work on their VM from their open to their end; client input is activity', async () => {
    const settled = (): Promise<number> =>
      pollUntil(async () => (workNow() === 0 ? 0 : undefined), { timeoutMs: 5000, what: 'the work on the VM to end' });
    await settled();
    // A file written: the client's bytes are all that moves.
    const s = await open('file.write', { id: VM, path: '/tmp/w' });
    assert.equal(workNow(), 1, 'the open stream');
    const reading = drain(s);
    const mark = activity.length;
    await s.write(new Uint8Array([1, 2, 3]));
    await s.closeInput();
    assert.equal(endOf(await withDeadline(reading, 10_000, 'the stream')).end.ok, true);
    assert.ok(activity.length > mark, 'its input was activity');
    await settled();
    let go!: () => void;
    session.slow = new Promise<void>((resolve) => (go = resolve));
    const call = request(client, subjects.host(HOST, 'file.stat'), { id: VM, path: '/slow' });
    await pollUntil(async () => (workNow() === 1 ? 1 : undefined), { timeoutMs: 5000, what: 'the call to be under way' });
    go();
    session.slow = undefined;
    await call;
    assert.equal(workNow(), 0, 'the call ended');
  });

  it('holds at most the window for a reader that takes nothing', async (t) => {
    const window = 64 << 10;
    const s = await open('exec.start', { id: VM, cmd: ['chunks', '100', '16384'] }, window);
    const b = bridgeOf(s);
    const guest = session.streams.at(-1);
    assert.equal(session.windows.at(-1), window, "the guest session's window is the client's");
    await pollUntil(async () => (b.counters.sent >= window ? true : undefined), { timeoutMs: 5000, what: 'the first window sent' });
    // Nothing more may flow: give it a few of the host's keepalive periods to show that it does not.
    await delay(1000);
    assert.equal(b.counters.sent, window);
    assert.ok((guest?.pulledBytes ?? 0) <= window, `taken from the guest: ${guest?.pulledBytes}`);
    const pulled = guest?.pulledBytes;
    const chunks = await withDeadline(drain(s), 10_000, 'the rest');
    assert.equal(bytesOf(chunks), 100 * 16384);
    assert.ok(b.counters.maxHeld <= 16384, `held at most one chunk: ${b.counters.maxHeld}`);
    t.diagnostic(
      `window ${window}: sent ${window} and stopped; guest gave ${pulled} before the reader took any; most held in hostd ${b.counters.maxHeld}; then all ${bytesOf(chunks)} bytes`,
    );
  });

  it('takes stdin within the credit it grants', async (t) => {
    const s = await open('exec.start', { id: VM, cmd: ['cat'], stdin: true });
    const b = bridgeOf(s);
    const input = new Uint8Array(600 << 10).map((_, i) => (i * 7) % 251);
    const reading = drain(s);
    await s.write(input);
    await s.closeInput();
    const chunks = await withDeadline(reading, 10_000, 'the echo');
    const echoed = Buffer.concat(chunks.flatMap((c) => ('bytes' in c ? [c.bytes] : [])));
    assert.ok(echoed.equals(Buffer.from(input)), 'stdout is stdin');
    assert.equal(endOf(chunks).end.ok, true);
    assert.ok(b.counters.maxInHeld <= 256 << 10, `input held ${b.counters.maxInHeld}`);
    t.diagnostic(`${input.length} bytes in and back out; most input held by hostd ${b.counters.maxInHeld}`);
  });

  it('ends with cancelled on cancel', async () => {
    const s = await open('exec.start', { id: VM, cmd: ['sleep'] });
    const chunks: StreamChunk[] = [];
    for await (const c of s) {
      chunks.push(c);
      if (c.kind === 'event') s.cancel();
    }
    assert.deepEqual(endOf(chunks).end, { ok: true, exitCode: 137, signal: 'KILL', timedOut: false, cancelled: true });
    assert.equal(session.streams.at(-1)?.cancelled, true);
  });

  it('cancels the stream of a client that disappears, after the idle time', async (t) => {
    const s = await open('exec.start', { id: VM, cmd: ['sleep'] });
    const guest = session.streams.at(-1);
    const sid = s.ref.sid;
    const started = Date.now();
    s.close();
    await pollUntil(async () => (guest?.cancelled && !streams.registry.get(sid) ? true : undefined), {
      timeoutMs: 4000,
      what: 'idle cancel',
    });
    const ms = Date.now() - started;
    assert.ok(ms >= IDLE_MS - 100, `not before the idle time: ${ms} ms`);
    t.diagnostic(`a silent client's stream was cancelled after ${ms} ms (idle ${IDLE_MS} ms)`);
  });

  it('opens a keyed stream once, and refuses the key for another request', async () => {
    const before = session.opens('exec');
    const body = { id: VM, cmd: ['sleep'], key: 'keyed-open-0001' };
    // The first reply is "lost": nobody listens on that stream yet, so the retry gets all of it.
    const first = (await request(client, subjects.host(HOST, 'exec.start'), body)) as { stream: { sid: string } };
    const b = await open('exec.start', body);
    assert.equal(b.ref.sid, first.stream.sid);
    assert.equal(session.opens('exec'), before + 1);
    await assert.rejects(open('exec.start', { ...body, cmd: ['chunks', '1', '1'] }), (e: ForkyError) => e.code === 'CONFLICT');
    b.cancel();
    const chunks = await drain(b);
    assert.equal(chunks[0]?.seq, 1);
    assert.equal(endOf(chunks).end.ok, true);
  });

  it('answers the unary endpoints and maps agent errors', async () => {
    assert.deepEqual(await request(client, subjects.host(HOST, 'file.stat'), { id: VM, path: '/tmp' }), {
      stat: { type: 'dir', size: 4096, mode: 0o755, mtimeMs: 0 },
    });
    await assert.rejects(
      request(client, subjects.host(HOST, 'file.stat'), { id: VM, path: '/missing' }),
      (e: ForkyError) => e.code === 'NOT_FOUND',
    );
    await assert.rejects(request(client, subjects.host(HOST, 'file.mkdir'), { id: VM, path: '/exists' }), (e: ForkyError) => {
      return e.code === 'CONFLICT' && e.details?.guest === 'EXISTS';
    });
    const list = (await request(client, subjects.host(HOST, 'file.list'), { id: VM, path: '/' })) as {
      entries: unknown[];
      truncated: boolean;
    };
    assert.equal(list.entries.length, 2);
    assert.equal(((await request(client, subjects.host(HOST, 'proc.list'), { id: VM })) as { processes: unknown[] }).processes.length, 1);
    await assert.rejects(
      request(client, subjects.host(HOST, 'proc.list'), { id: 'vm-zzzzzzzzzzzz' }),
      (e: ForkyError) => e.code === 'NOT_FOUND',
    );
    const detached = await open('exec.start', { id: VM, cmd: ['sleep'], detach: true });
    assert.equal(detached.pid, 5151);
  });

  it('ends a stream whose input skips a seq with PROTOCOL', async () => {
    const s = await open('exec.start', { id: VM, cmd: ['cat'], stdin: true });
    client.publish(s.ref.in, new Uint8Array(3), { headers: safeHeaders({ 'Forky-Seq': 5, 'Forky-Kind': 'data' }) });
    const end = endOf(await withDeadline(drain(s), 5000, 'the end')).end;
    assert.equal(end.ok, false);
    assert.equal(end.ok === false && end.code, 'PROTOCOL');
  });

  it("a host's user cannot publish on another host's out subject", async (t) => {
    const other = subjects.streamOut('h2', 'AbCdEfGhIjKlMnOpQrStUv');
    const seen = client.subscribe(other);
    await client.flush();
    const errs = (async () => {
      for await (const st of hostNc.status())
        if (st.type === 'error' && /Permissions Violation/i.test(String(st.error))) return String(st.error);
      return '';
    })();
    hostNc.publish(other, 'forged');
    const err = await withDeadline(errs, 5000, 'permission error');
    assert.match(err, /Publish to "forky\.v1\.out\.h2\./);
    await client.flush();
    assert.equal(seen.getProcessed(), 0);
    seen.unsubscribe();
    t.diagnostic(`hostd-h1 publishing on h2's out: ${err.slice(0, 90)}`);
  });

  it("ends the VM's streams when its guest session closes (the VM is destroyed)", async () => {
    const s = await open('exec.start', { id: VM, cmd: ['sleep'] });
    const reading = drain(s);
    session.close();
    const end = endOf(await withDeadline(reading, 5000, 'the end')).end;
    assert.deepEqual(end.ok === false && end.code, 'GONE');
  });
});

describe('the scheduler routes sandbox requests to the VM host (dry-run hostd)', { timeout: 120_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url, { hostId: 'st-h1', overrides: { dryRun: true, pool: { size: 0 } } });
    sched = await startTestScheduler(nats.url);
    await pollUntil(async () => ((await sched.client.call('hosts', {})).hosts.some((h) => h.alive) ? true : undefined), {
      timeoutMs: 20_000,
      what: 'the host seen by the scheduler',
    });
  });
  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it('reaches the VM through its host, which checks it', async (t) => {
    const vm = await sched.client.call('vm.boot', {});
    // The dry run has no guest agent: the refusal comes from the VM's host, past its checks.
    const e = await openStream(host.nc, subjects.sched('exec.start'), { id: vm.id, cmd: ['true'] }).catch((err: ForkyError) => err);
    assert.ok(e instanceof ForkyError);
    assert.equal(e.code, 'UNAVAILABLE');
    assert.match(e.message, /no guest agent in a dry run/);
    await assert.rejects(sched.client.call('file.stat', { id: vm.id, path: '/' }), /no guest agent/);
    await assert.rejects(
      sched.client.call('file.stat', { id: 'vm-zzzzzzzzzzzz', path: '/' }),
      (err: ForkyError) => err.code === 'NOT_FOUND',
    );
    await sched.client.call('vm.pause', { id: vm.id });
    await assert.rejects(sched.client.call('proc.list', { id: vm.id }), (err: ForkyError) => err.code === 'INVALID_STATE');
    await sched.client.call('vm.destroy', { id: vm.id });
    t.diagnostic(`exec.start via the scheduler: ${e.code} ${e.message.slice(0, 60)}; unknown VM NOT_FOUND; paused VM INVALID_STATE`);
  });
});
