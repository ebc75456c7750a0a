import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { ForkyError, pollUntil, silentLogger, withDeadline } from '@forky/base';
import {
  clientStreamState,
  connectBus,
  openStream,
  safeHeaders,
  startService,
  type ClientStream,
  type StreamChunk,
} from '@forky/bus/internal';
import { subjects, type StreamRef } from '@forky/contract';
import { GuestStreams } from '@forky/hostd/internal';
import { BRIDGE_HOST, BRIDGE_VM, drain, guestEndpoint, startBridge, type BridgeFixture } from '../helpers/bridge-fixture.js';
import { FakeSession } from '../helpers/fake-guest.js';

const HOST = BRIDGE_HOST;
/** A host played by the test itself, to send what it likes on `out`. */
const FAKE = 'h2';
const VM = BRIDGE_VM;
const WINDOW = 64 << 10;

/** The host's end of one stream, scripted by the test: it counts the credit it gets and the cancels. */
class ScriptedStream {
  credit = 0;
  granted = 0;
  cancels = 0;
  #seq = 0;
  #wake: (() => void) | undefined;

  constructor(
    readonly nc: NatsConnection,
    readonly ref: StreamRef,
  ) {
    nc.subscribe(ref.credit, {
      callback: (_e, m) => {
        const { bytes } = m.json<{ bytes: number }>();
        this.credit += bytes;
        this.granted += bytes;
        this.#wakeUp();
      },
    });
    nc.subscribe(ref.cancel, { callback: () => (this.cancels++, this.#wakeUp()) });
  }

  /** Sends a message, counted or not: the caller sees to the credit. */
  send(kind: string, body: Uint8Array): void {
    this.nc.publish(this.ref.out, body, { headers: safeHeaders({ 'Forky-Seq': ++this.#seq, 'Forky-Kind': kind }) });
  }

  /** Sends a counted message once the client's credit covers it, as STREAMS.md asks of a host. */
  async sendWithin(kind: string, body: Uint8Array): Promise<void> {
    await this.until(() => this.credit >= body.length);
    this.credit -= body.length;
    this.send(kind, body);
  }

  async until(cond: () => boolean): Promise<void> {
    while (!cond()) await new Promise<void>((resolve) => (this.#wake = resolve));
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

describe('ClientStream: leaving a loop, and credit for every counted message (real nats-server)', { timeout: 60_000 }, () => {
  let fakeNc: NatsConnection;
  let client: NatsConnection;
  let session: FakeSession;
  let streams: GuestStreams;
  const services: Service[] = [];
  const scripted: ScriptedStream[] = [];
  const open = (body: Record<string, unknown>): Promise<ClientStream> =>
    openStream(client, subjects.host(HOST, 'exec.start'), body, { keepaliveMs: 300, silenceMs: 4000 });
  const openScripted = async (): Promise<[ClientStream, ScriptedStream]> => {
    const s = await openStream(client, subjects.host(FAKE, 'file.watch'), { id: VM, path: '/' }, { window: WINDOW, keepaliveMs: 300 });
    const host = scripted.find((h) => h.ref.sid === s.ref.sid);
    assert.ok(host, 'the scripted host made the stream');
    await withDeadline(
      host.until(() => host.granted > 0),
      5000,
      'the first credit',
    );
    return [s, host];
  };

  let fixture: BridgeFixture | undefined;
  before(async () => {
    // Long enough that only a cancel (not the host giving up on a silent client) ends a stream in time.
    fixture = await startBridge([HOST, FAKE], { idleMs: 20_000, keepaliveMs: 300, cancelGraceMs: 1000 });
    ({ client, session, streams } = fixture);
    const { nats, auth } = fixture;
    fakeNc = await connectBus({ servers: nats.url, name: 'test-fake-host', ...(auth.hosts[FAKE] as { user: string; pass: string }) });
    services.push(
      await startService(
        fakeNc,
        { name: 'forky-fake-host', version: '0.0.0', description: 'test', queue: '' },
        [
          guestEndpoint(FAKE, 'file.watch', async () => {
            const sid = `scripted${scripted.length}`.padEnd(22, 'x');
            const ref: StreamRef = {
              sid,
              host: FAKE,
              out: subjects.streamOut(FAKE, sid),
              in: subjects.streamIn(FAKE, sid),
              credit: subjects.streamCredit(FAKE, sid),
              cancel: subjects.streamCancel(FAKE, sid),
            };
            scripted.push(new ScriptedStream(fakeNc, ref));
            await fakeNc.flush();
            return { stream: ref };
          }),
        ],
        silentLogger(),
      ),
    );
  });
  after(async () => {
    for (const s of services) await s.stop();
    await fakeNc?.close();
    await fixture?.stop();
  });

  it('a loop left by break ends the stream on the host, and leaves no timer behind', async (t) => {
    const s = await open({ id: VM, cmd: ['sleep'] });
    const guest = session.streams.at(-1);
    const sid = s.ref.sid;
    let first: StreamChunk | undefined;
    for await (const c of s) {
      first = c;
      break;
    }
    assert.equal(first?.kind, 'event');
    const left = Date.now();
    await pollUntil(async () => (guest?.cancelled && !streams.registry.get(sid) ? true : undefined), {
      timeoutMs: 3000,
      what: 'the host ending the stream the loop left',
    });
    const ms = Date.now() - left;
    assert.equal(streams.registry.size, 0, "the host's slot is free");
    assert.deepEqual(clientStreamState(s), { timer: undefined, watched: false }, 'no keepalive, no hook on the connection');
    t.diagnostic(`break after the first chunk: guest cancelled and slot freed ${ms} ms later (host idle time 20 s)`);
  });

  it('a loop left by a throw ends the stream too', async () => {
    const s = await open({ id: VM, cmd: ['sleep'] });
    const guest = session.streams.at(-1);
    await assert.rejects(
      (async () => {
        for await (const c of s) throw new Error(`stop at ${c.kind}`);
      })(),
      /stop at event/,
    );
    await pollUntil(async () => (guest?.cancelled && streams.registry.size === 0 ? true : undefined), {
      timeoutMs: 3000,
      what: 'the host ending the stream',
    });
    assert.deepEqual(clientStreamState(s), { timer: undefined, watched: false });
  });

  it('a running stream holds no timer up; read to its end, it leaves none, nor a hook', async () => {
    const s = await open({ id: VM, cmd: ['chunks', '3', '100'] });
    assert.deepEqual(clientStreamState(s), { timer: false, watched: true }, 'a running stream does not hold the process up');
    const chunks = await withDeadline(drain(s), 5000, 'the stream');
    assert.equal(chunks.at(-1)?.kind, 'end');
    assert.deepEqual(clientStreamState(s), { timer: undefined, watched: false });
  });

  it('tops up credit for event bodies: many events within the window do not stall', async (t) => {
    const [s, host] = await openScripted();
    const body = new TextEncoder().encode(JSON.stringify({ type: 'events', events: [{ path: '/'.padEnd(180, 'a') }] }));
    const n = Math.ceil((8 * WINDOW) / body.length);
    const reading = drain(s);
    for (let i = 0; i < n; i++) await withDeadline(host.sendWithin('event', body), 5000, `credit for event ${i + 1} of ${n}`);
    host.send('end', new TextEncoder().encode(JSON.stringify({ ok: true })));
    const chunks = await withDeadline(reading, 5000, 'the events');
    assert.equal(chunks.filter((c) => c.kind === 'event').length, n);
    assert.deepEqual(chunks.at(-1), { kind: 'end', seq: n + 1, end: { ok: true } });
    assert.ok(host.granted >= n * body.length, `granted ${host.granted} for ${n * body.length} bytes of events`);
    t.diagnostic(`${n} events (${n * body.length} bytes, ${((n * body.length) / WINDOW).toFixed(1)} windows): granted ${host.granted}`);
  });

  it('ends with INTERNAL, and cancels, when a host sends beyond the credit (an event counts)', async () => {
    const [s, host] = await openScripted();
    assert.equal(host.granted, WINDOW);
    host.send('stdout', new Uint8Array(WINDOW - 50));
    host.send('event', new TextEncoder().encode(JSON.stringify({ type: 'stat', stat: { pad: 'x'.repeat(60) } })));
    host.send('end', new TextEncoder().encode(JSON.stringify({ ok: true })));
    const got: StreamChunk[] = [];
    const err = await withDeadline(
      (async () => {
        for await (const c of s) got.push(c);
      })().then(
        () => undefined,
        (e: unknown) => e,
      ),
      5000,
      'the stream',
    );
    assert.ok(err instanceof ForkyError, `the loop ends with an error, not ${got.map((c) => c.kind).join(',')}`);
    assert.equal(err.code, 'INTERNAL');
    assert.match(err.message, /beyond the credit/);
    assert.deepEqual(
      got.map((c) => c.kind),
      ['stdout'],
    );
    await pollUntil(async () => (host.cancels > 0 ? true : undefined), { timeoutMs: 2000, what: 'the cancel' });
  });
});
