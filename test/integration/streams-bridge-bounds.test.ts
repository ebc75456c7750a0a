import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, delay, pollUntil, silentLogger, withDeadline } from '@forky/base';
import { openStream, request, type ClientStream, type StreamChunk } from '@forky/bus';
import { ExecStartRequest, subjects, type GuestEndpoint } from '@forky/contract';
import { Bridge, GuestStreams } from '@forky/hostd/internal';
import { BRIDGE_HOST, BRIDGE_VM, drain, startBridge, type BridgeFixture } from '../helpers/bridge-fixture.js';
import { FakeSession, FakeStream } from '../helpers/fake-guest.js';

/** The bridge's bounds: memory per stream, credit for events, resizes, keys, stop, unary calls. */

const HOST = BRIDGE_HOST;
const VM = BRIDGE_VM;
const IDLE_MS = 1500;
const START_IDLE_MS = 5000;

const endOf = (chunks: StreamChunk[]): StreamChunk & { kind: 'end' } => chunks.at(-1) as StreamChunk & { kind: 'end' };
const isCode = (code: string, message?: RegExp) => (e: ForkyError) => e.code === code && (!message || message.test(e.message));

describe('the stream bridge keeps within its bounds (real nats-server, fake guest)', { timeout: 120_000 }, () => {
  let hostNc: NatsConnection;
  let client: NatsConnection;
  let session: FakeSession;
  let streams: GuestStreams;
  const open = (endpoint: GuestEndpoint, body: Record<string, unknown>, window?: number): Promise<ClientStream> =>
    openStream(client, subjects.host(HOST, endpoint), body, { keepaliveMs: 300, silenceMs: 4000, ...(window ? { window } : {}) });
  const lastGuest = (): FakeStream => session.streams.at(-1) as FakeStream;

  let fixture: BridgeFixture | undefined;
  before(async () => {
    fixture = await startBridge([HOST], { idleMs: IDLE_MS, startIdleMs: START_IDLE_MS, keepaliveMs: 300, cancelGraceMs: 1000 });
    ({ hostNc, client, session, streams } = fixture);
  });
  after(() => fixture?.stop());

  it('holds no chunk it has sent: 512 MiB through a bridge, arrayBuffers stay flat', async (t) => {
    const chunks = 8192;
    const guest = new FakeStream(1, { op: 'exec', cmd: ['zeros', String(chunks), String(64 << 10)] });
    const base = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let published = 0;
    // A NATS connection that drops what it is given: only the bridge's own holding is measured.
    const nc = {
      publish: () => {
        if (++published % 32 === 0) peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
      },
    } as unknown as NatsConnection;
    const b = new Bridge({
      nc,
      hostId: HOST,
      sid: 'AbCdEfGhIjKlMnOpQrStUv',
      vmId: VM,
      stream: guest,
      events: guest.events[Symbol.asyncIterator](),
      takesInput: false,
      inWindow: 0,
      bytes: 'process',
      idleMs: 60_000,
      keepaliveMs: 60_000,
      cancelGraceMs: 1000,
      log: silentLogger(),
    });
    b.onCredit(1 << 30);
    const end = await withDeadline(b.done, 60_000, 'the stream');
    assert.equal(end.ok, true);
    assert.equal(guest.pulledBytes, chunks * (64 << 10));
    // Without --expose-gc, garbage not yet collected counts too (some 60-120 MiB seen); a leak holds it all (512).
    assert.ok(peak < 256 << 20, `arrayBuffers grew by ${peak >> 20} MiB`);
    t.diagnostic(`${guest.pulledBytes >> 20} MiB through the bridge; arrayBuffers peaked ${peak >> 20} MiB above the start`);
  });

  it("charges events against the client's credit: a guest's MSG flood waits for the reader", async (t) => {
    const window = 64 << 10;
    const s = await open('exec.start', { id: VM, cmd: ['events', '20000'] }, window);
    const b = streams.registry.get(s.ref.sid) as Bridge;
    const guest = lastGuest();
    // A window holds some 2300 of these ~28-byte events.
    await pollUntil(async () => (guest.pulledMsgs >= 2000 ? true : undefined), { timeoutMs: 5000, what: 'the first window of events' });
    // Nothing more may flow while the reader takes nothing: a few keepalive periods show it does not.
    await delay(1000);
    assert.ok(b.counters.sent <= window, `sent ${b.counters.sent} bytes of events on a ${window} window`);
    assert.ok(guest.pulledMsgs < 3000, `MSGs taken from the guest: ${guest.pulledMsgs}`);
    s.cancel();
    await withDeadline(drain(s), 5000, 'the end');
    t.diagnostic(`window ${window}: ${b.counters.sent} bytes of events sent, ${guest.pulledMsgs} of 20001 MSGs taken, then it waited`);
  });

  it('coalesces resizes on a PTY, and refuses them on a stream without one', async (t) => {
    const s = await open('exec.start', { id: VM, cmd: ['cat'], pty: { rows: 24, cols: 80 } });
    const guest = lastGuest();
    const started = Date.now();
    for (let i = 1; i <= 1000; i++) s.resize(10 + (i % 500), 100);
    s.resize(42, 43);
    await pollUntil(async () => (guest.resizes.at(-1)?.rows === 42 ? true : undefined), { timeoutMs: 5000, what: 'the last size' });
    const ms = Date.now() - started;
    assert.deepEqual(guest.resizes.at(-1), { rows: 42, cols: 43 });
    assert.ok(guest.resizes.length <= ms / 50 + 2, `${guest.resizes.length} resizes forwarded in ${ms} ms`);
    s.cancel();
    await withDeadline(drain(s), 5000, 'the end');

    const plain = await open('exec.start', { id: VM, cmd: ['sleep'] });
    plain.resize(30, 30);
    const end = endOf(await withDeadline(drain(plain), 5000, 'the end')).end;
    assert.equal(end.ok === false && end.code, 'PROTOCOL');
    assert.equal(lastGuest().resizes.length, 0);
    t.diagnostic(`1001 resizes in: ${guest.resizes.length} forwarded in ${ms} ms, the last one last; without a PTY: PROTOCOL`);
  });

  it('never runs a keyed detached exec twice once its OPEN may have reached the guest', async () => {
    const execs = (what: string): number => session.calls.filter((c) => c.op === 'exec' && c.cmd[0] === what).length;
    const gone = { id: VM, cmd: ['gone'], detach: true, key: 'detached-gone-0001' };
    await assert.rejects(request(client, subjects.host(HOST, 'exec.start'), gone), isCode('UNAVAILABLE'));
    await assert.rejects(
      request(client, subjects.host(HOST, 'exec.start'), gone),
      isCode('UNAVAILABLE', /outcome is unknown: it may have run/),
    );
    assert.equal(execs('gone'), 1, 'the retry ran nothing');
    // The agent's own refusal ran nothing: the key may be tried again.
    const invalid = { id: VM, cmd: ['invalid'], detach: true, key: 'detached-invalid-01' };
    await assert.rejects(request(client, subjects.host(HOST, 'exec.start'), invalid), isCode('BAD_REQUEST'));
    await assert.rejects(request(client, subjects.host(HOST, 'exec.start'), invalid), isCode('BAD_REQUEST'));
    assert.equal(execs('invalid'), 2);
  });

  it('keeps a keyed stream that has not started past the idle time, for the retry of a lost reply', async (t) => {
    const body = { id: VM, cmd: ['sleep'], key: 'keyed-lost-reply-01' };
    const first = (await request(client, subjects.host(HOST, 'exec.start'), body)) as { stream: { sid: string } };
    const guest = lastGuest();
    // The retry comes after a client's request timeout, which is past a started stream's idle time.
    await delay(IDLE_MS + 1000);
    assert.equal(guest.cancelled, false, 'not cancelled within the idle time of a started stream');
    const s = await open('exec.start', body);
    assert.equal(s.ref.sid, first.stream.sid);
    s.cancel();
    const end = endOf(await withDeadline(drain(s), 5000, 'the end')).end;
    assert.equal(end.ok && end.cancelled, true);
    // Nobody ever listening: cancelled after the longer wait, not never.
    const lost = (await request(client, subjects.host(HOST, 'exec.start'), { id: VM, cmd: ['sleep'] })) as { stream: { sid: string } };
    const at = Date.now();
    await pollUntil(async () => (streams.registry.get(lost.stream.sid) ? undefined : true), {
      timeoutMs: START_IDLE_MS + 3000,
      what: 'cancel',
    });
    assert.ok(Date.now() - at >= START_IDLE_MS - 500, `an unstarted stream lived ${Date.now() - at} ms`);
    t.diagnostic(`unstarted keyed stream still there after ${IDLE_MS + 1000} ms; one nobody started went after ${Date.now() - at} ms`);
  });

  it('cuts a listing at the reply budget in bytes of JSON, and stops the guest', async (t) => {
    const list = (await request(client, subjects.host(HOST, 'file.list'), { id: VM, path: '/escapes' })) as {
      entries: unknown[];
      truncated: boolean;
    };
    const bytes = Buffer.byteLength(JSON.stringify(list));
    assert.equal(list.truncated, true);
    assert.ok(list.entries.length > 1000 && bytes <= 800 << 10, `${list.entries.length} entries in ${bytes} bytes`);
    const guest = session.streams.filter((s) => s.req.op === 'list').at(-1);
    assert.equal(guest?.cancelled, true, 'the guest stopped listing');
    t.diagnostic(`${list.entries.length} of 20000 escaped names in a ${bytes}-byte reply, truncated; guest stream cancelled`);
  });

  it('takes at most 16 unary calls at once per VM', async () => {
    let release!: () => void;
    session.slow = new Promise((resolve) => (release = resolve));
    const stat = () => request(client, subjects.host(HOST, 'file.stat'), { id: VM, path: '/slow' });
    const calls = Array.from({ length: 16 }, stat);
    await pollUntil(async () => (session.calls.filter((c) => c.op === 'stat' && c.path === '/slow').length === 16 ? true : undefined), {
      timeoutMs: 5000,
      what: '16 calls under way',
    });
    await assert.rejects(stat(), isCode('CAPACITY'));
    release();
    session.slow = undefined;
    await Promise.all(calls);
    await stat();
  });

  it('on stop refuses new opens and cancels one still awaiting its pid', async () => {
    const late = new FakeSession();
    const gs = new GuestStreams({ nc: hostNc, hostId: HOST, guest: async () => late, startedWaitMs: 1000, log: silentLogger() });
    const h = gs.handlers();
    const opening = h['exec.start'](ExecStartRequest.parse({ id: VM, cmd: ['late'] }));
    await pollUntil(async () => (late.opens('exec') === 1 ? true : undefined), { timeoutMs: 2000, what: 'the open' });
    await withDeadline(gs.stop(), 5000, 'stop');
    await assert.rejects(opening, isCode('UNAVAILABLE'));
    assert.equal(late.streams[0]?.cancelled, true, 'its guest stream was cancelled');
    assert.equal(gs.registry.size, 0);
    await assert.rejects(h['exec.start'](ExecStartRequest.parse({ id: VM, cmd: ['sleep'] })), isCode('UNAVAILABLE'));
    assert.equal(late.opens('exec'), 1);
  });
});
