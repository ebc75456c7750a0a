import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ForkyError, pollUntil, withDeadline } from '@forky/base';
import { connectAgent, type AgentEnd, type GuestSession } from '@forky/agent';
import { encodeFrame, FrameType, HEADER_BYTES, MAX_PAYLOAD, sessionStats } from '@forky/agent/internal';
import { bytes, FakeAgent, GOOD_BYTES, goodData, hostileFrame, prng, VIOLATIONS, type FakeConn } from '../helpers/fake-agent.js';

describe('agent session against a hostile fake guest', { timeout: 30_000 }, () => {
  const fakes: FakeAgent[] = [];
  const sessions: GuestSession[] = [];
  after(async () => {
    for (const s of sessions) s.close();
    for (const f of fakes) await f.stop();
  });
  const start = async (onConn: (c: FakeConn) => void | Promise<void>): Promise<FakeAgent> => {
    const f = await FakeAgent.start(onConn);
    fakes.push(f);
    return f;
  };
  const connect = async (f: FakeAgent, timeoutMs = 3000): Promise<GuestSession> => {
    const s = await connectAgent(f.path, { timeoutMs, cancelGraceMs: 2000 });
    sessions.push(s);
    return s;
  };

  it('fails within its deadline, naming what did not answer, when the guest never answers HELLO', async () => {
    const f = await start(() => undefined);
    const t0 = Date.now();
    await assert.rejects(connectAgent(f.path, { timeoutMs: 300 }), (e: unknown) => {
      assert.ok(e instanceof ForkyError);
      assert.equal(e.code, 'TIMEOUT');
      assert.match(e.message, /did not answer HELLO within 300 ms/);
      assert.ok(e.message.includes(f.path));
      return true;
    });
    assert.ok(Date.now() - t0 < 1500);
    // The guest saw the zeros and a HELLO.
    const hello = await f.conns[0]!.next((x) => x.type === FrameType.HELLO);
    assert.match(JSON.parse(hello.payload.toString()).session, /^[0-9a-f]{32}$/);
  });

  it('fails UNAVAILABLE on a missing socket, and TIMEOUT when only stale HELLO_ACKs come', async () => {
    await assert.rejects(connectAgent('/nonexistent/agent.sock', { timeoutMs: 1000 }), { code: 'UNAVAILABLE' });
    const f = await start(async (c) => {
      await c.next((x) => x.type === FrameType.HELLO);
      c.json(FrameType.HELLO_ACK, 0, { v: 1, session: '0'.repeat(32), agent: 'old', pid: 1 });
    });
    await assert.rejects(connectAgent(f.path, { timeoutMs: 300 }), { code: 'TIMEOUT' });
  });

  it("drops a stale HELLO_ACK, garbage and a parent's partial frame before the right one", async () => {
    const rand = prng(1);
    const stale = encodeFrame(FrameType.HELLO_ACK, 0, Buffer.from(JSON.stringify({ v: 1, session: 'a'.repeat(32), agent: 'x', pid: 9 })));
    const partial = encodeFrame(FrameType.DATA, 3, bytes(rand, 1000)).subarray(0, 300);
    const f = await start(
      (c) =>
        void c.handshake({ pid: 77, before: Buffer.concat([partial, bytes(rand, 500), stale, Buffer.alloc(MAX_PAYLOAD + HEADER_BYTES)]) }),
    );
    const s = await connect(f);
    assert.deepEqual(s.agent, { name: 'fake-agent/1', pid: 77 });
    const c = f.conns[0]!;
    const p = s.ping(2000);
    const ping = await c.next((x) => x.type === FrameType.PING);
    c.send(FrameType.PONG, 0, ping.payload);
    await p;
  });

  it('serves a good stream through 1,000 hostile frames, ends violators PROTOCOL, and stays bounded', async (t) => {
    const rand = prng(42);
    const data = goodData();
    let hostile = 0;
    const burst = (c: FakeConn, n: number): void => {
      for (let k = 0; k < n && hostile < 1000; k++, hostile++) c.raw(hostileFrame(hostile % 10, hostile, rand));
      // Zeros complete a truncated frame, so the next good frame is never held behind it.
      c.raw(Buffer.alloc(256));
    };
    const serveGood = async (c: FakeConn, id: number): Promise<void> => {
      c.send(FrameType.OPENED, id);
      c.json(FrameType.MSG, id, { type: 'started', pid: 42 });
      for (let off = 0; off < data.length;) {
        await c.waitCredit(id, 1, 10_000);
        const n = Math.min(c.credit.get(id) ?? 0, 16384, data.length - off);
        c.data(id, 1, data.subarray(off, off + n));
        off += n;
        burst(c, 8);
      }
      burst(c, 1000);
      c.send(FrameType.EOF, id, Buffer.from([1]));
      c.json(FrameType.END, id, { ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
    };
    const f = await start(async (c) => {
      await c.handshake();
      c.onFrame((fr) => {
        if (fr.type === FrameType.PING) c.send(FrameType.PONG, 0, fr.payload);
        if (fr.type === FrameType.CANCEL)
          c.json(FrameType.END, fr.stream, { ok: true, exitCode: 137, signal: 'KILL', timedOut: false, cancelled: true });
      });
      for (;;) {
        const { id, req } = await c.open(() => true, 60_000);
        const name = (req.cmd as string[])[0] ?? '';
        if (name === 'good') void serveGood(c, id);
        else if (name === 'huge-msg') {
          // A MSG over MAX_PAYLOAD is no frame at all: garbage, and the stream carries on.
          const big = Buffer.from(encodeFrame(FrameType.MSG, id, Buffer.alloc(16)));
          big.writeUInt32BE(100_000, 8);
          c.raw(Buffer.concat([big, Buffer.alloc(100_000, 0x20)]));
          c.json(FrameType.END, id, { ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
        } else {
          c.send(FrameType.OPENED, id);
          c.json(FrameType.MSG, id, { type: 'started', pid: 43 });
          VIOLATIONS[name]?.send(c, id);
        }
      }
    });
    const s = await connect(f);
    const good = s.open({ op: 'exec', cmd: ['good'] }, { window: 64 * 1024 });
    const bad = Object.keys(VIOLATIONS).map((name) => ({ name, stream: s.open({ op: 'exec', cmd: [name] }, { window: 4096 }) }));
    const huge = s.open({ op: 'exec', cmd: ['huge-msg'] });
    const hash = createHash('sha256');
    let got = 0;
    let maxQueued = 0;
    let maxBuffered = 0;
    let end: AgentEnd | undefined;
    for await (const ev of good.events) {
      const st = sessionStats(s);
      maxQueued = Math.max(maxQueued, st.maxQueuedBytes);
      maxBuffered = Math.max(maxBuffered, st.readerBuffered);
      if (ev.kind === 'data') {
        hash.update(ev.bytes);
        got += ev.bytes.length;
      } else if (ev.kind === 'end') end = ev.end;
    }
    assert.equal(got, GOOD_BYTES);
    assert.equal(hash.digest('hex'), createHash('sha256').update(data).digest('hex'));
    assert.deepEqual(end, { ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
    for (const { name, stream } of bad) {
      const e = await stream.ended;
      assert.equal(e.ok, false, name);
      assert.equal(!e.ok && e.code, 'PROTOCOL', name);
      assert.match(!e.ok ? e.message : '', VIOLATIONS[name]!.why, name);
    }
    assert.equal((await huge.ended).ok, true);
    assert.equal(hostile, 1000);
    const st = sessionStats(s);
    t.diagnostic(`stats ${JSON.stringify({ ...st, maxQueued, maxBuffered })}`);
    assert.equal(st.closed, false);
    assert.ok(st.invalidFrames >= 700 && st.invalidFrames <= 1024, `invalid frames ${st.invalidFrames}`);
    assert.ok(st.garbageBytes > 100_000);
    assert.ok(maxQueued <= 64 * 1024 + MAX_PAYLOAD + HEADER_BYTES, `queued ${maxQueued}`);
    assert.ok(maxBuffered <= 2 * (MAX_PAYLOAD + HEADER_BYTES), `reader held ${maxBuffered}`);
    await s.ping(2000);
    // Violators were cancelled and their ENDs forgotten: nothing is left open.
    await pollUntil(async () => (sessionStats(s).streams === 0 ? true : undefined), { timeoutMs: 3000, what: 'streams forgotten' });
  });

  it('a flood of DATA beyond credit ends the stream at once and is never buffered', async () => {
    let sent = 0;
    const f = await start(async (c) => {
      await c.handshake();
      const { id } = await c.open();
      c.send(FrameType.OPENED, id);
      for (let i = 0; i < 160; i++, sent += 65535)
        if (!c.data(id, 1, Buffer.alloc(65535, 1))) await new Promise((r) => c.socket.once('drain', r));
    });
    const s = await connect(f);
    const st = s.open({ op: 'exec', cmd: ['yes'] }, { window: 4096 });
    const e = await st.ended;
    assert.equal(!e.ok && e.code, 'PROTOCOL');
    let max = 0;
    await pollUntil(
      async () => {
        max = Math.max(max, sessionStats(s).maxQueuedBytes);
        return sent === 160 * 65535 && sessionStats(s).readerBuffered < MAX_PAYLOAD + HEADER_BYTES ? true : undefined;
      },
      { timeoutMs: 10_000, what: 'flood sent' },
    );
    assert.ok(max <= 4096 + MAX_PAYLOAD, `queued ${max}`);
    assert.equal(sessionStats(s).closed, false);
  });

  it('MSGs a consumer does not take stop the session reading at one frame past the window', async () => {
    const f = await start(async (c) => {
      await c.handshake();
      const { id } = await c.open();
      c.send(FrameType.OPENED, id);
      const stat = { type: 'file', size: 1, mode: 0o644, mtimeMs: 1 };
      for (let i = 0; i < 300; i++) c.json(FrameType.MSG, id, { type: 'entries', entries: [{ name: `${i}-${'n'.repeat(2000)}`, stat }] });
      c.json(FrameType.END, id, { ok: true });
    });
    const s = await connect(f);
    const list = s.open({ op: 'list', path: '/big' }, { window: 8192 });
    await pollUntil(async () => (sessionStats(s).paused ? true : undefined), { timeoutMs: 5000, what: 'session paused' });
    assert.ok(sessionStats(s).maxQueuedBytes <= 8192 + MAX_PAYLOAD + HEADER_BYTES);
    let msgs = 0;
    for await (const ev of list.events) {
      if (ev.kind === 'msg') msgs++;
      assert.ok(sessionStats(s).maxQueuedBytes <= 8192 + MAX_PAYLOAD + HEADER_BYTES);
    }
    assert.equal(msgs, 300);
    assert.deepEqual(await list.ended, { ok: true });
    assert.equal(sessionStats(s).paused, false);
  });

  it("write() sends input only within the agent's credit and rejects once the stream ended", async () => {
    const input = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i & 0xff));
    const received: Buffer[] = [];
    let overCredit = false;
    const f = await start(async (c) => {
      await c.handshake();
      const { id } = await c.open();
      c.send(FrameType.OPENED, id);
      let credit = 0;
      for (;;) {
        if (credit === 0) {
          const grant = Buffer.alloc(4);
          grant.writeUInt32BE(1000);
          c.send(FrameType.CREDIT, id, grant);
          credit = 1000;
        }
        const fr = await c.next((x) => x.stream === id && (x.type === FrameType.DATA || x.type === FrameType.EOF));
        if (fr.type === FrameType.EOF) break;
        const n = fr.payload.length - 1;
        if (n > credit || fr.payload[0] !== 0) overCredit = true;
        credit -= n;
        received.push(fr.payload.subarray(1));
      }
      c.json(FrameType.END, id, { ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
    });
    const s = await connect(f);
    const st = s.open({ op: 'exec', cmd: ['cat'], stdin: true });
    await st.write(input);
    st.closeInput();
    assert.equal((await st.ended).ok, true);
    assert.equal(overCredit, false);
    assert.deepEqual(Buffer.concat(received), input);
    await assert.rejects(st.write(Buffer.from('late')), { code: 'INVALID_STATE' });
  });

  it('quiesce holds OPENs and CANCELs back until every OPEN sent is answered', async () => {
    let conn: FakeConn | undefined;
    const f = await start(async (c) => {
      conn = c;
      await c.handshake();
    });
    const s = await connect(f);
    const c = conn!;
    const a = s.open({ op: 'watch', path: '/' });
    const { id: aId } = await c.open();
    let quiesced = false;
    const q = s.quiesce(2000).then((release) => {
      quiesced = true;
      return release;
    });
    const b = s.open({ op: 'stat', path: '/b' });
    a.cancel();
    await new Promise((r) => setImmediate(r));
    assert.equal(quiesced, false);
    const t0 = Date.now();
    c.send(FrameType.OPENED, aId);
    const release = await q;
    assert.ok(Date.now() - t0 < 1000);
    assert.equal(c.received.filter((x) => x.type === FrameType.OPEN).length, 1);
    assert.equal(c.received.filter((x) => x.type === FrameType.CANCEL).length, 0);
    release();
    const { id: bId, req } = await c.open();
    assert.equal(req.path, '/b');
    await c.next((x) => x.type === FrameType.CANCEL && x.stream === aId);
    c.json(FrameType.END, aId, { ok: false, code: 'CANCELLED', message: 'cancelled' });
    c.json(FrameType.END, bId, { ok: false, code: 'NOT_FOUND', message: '/b' });
    assert.equal((await a.ended).ok, false);
    assert.deepEqual(await b.ended, { ok: false, code: 'NOT_FOUND', message: '/b' });
    // An OPEN the agent never answers: quiesce fails at its deadline (no snapshot with it in
    // flight), and lets OPENs held meanwhile go again.
    s.open({ op: 'stat', path: '/silent' });
    await c.open((r) => r.path === '/silent');
    const t1 = Date.now();
    const q2 = s.quiesce(300);
    s.open({ op: 'stat', path: '/held' });
    await assert.rejects(q2, (e: unknown) => {
      assert.ok(e instanceof ForkyError);
      assert.equal(e.code, 'UNAVAILABLE');
      assert.equal(e.message, 'the guest agent did not answer 1 requests within 300 ms: no snapshot with requests in flight');
      return true;
    });
    assert.ok(Date.now() - t1 >= 290 && Date.now() - t1 < 1500);
    await c.open((r) => r.path === '/held');
    s.open({ op: 'stat', path: '/after' });
    await c.open((r) => r.path === '/after');
  });

  it('a stream has one started and one stat MSG: a repeat is a violation of that stream', async () => {
    const f = await start(async (c) => {
      await c.handshake();
      const stat = { type: 'file', size: 1, mode: 0o644, mtimeMs: 1 };
      const { id } = await c.open((r) => r.op === 'read');
      c.send(FrameType.OPENED, id);
      c.json(FrameType.MSG, id, { type: 'stat', stat });
      c.json(FrameType.MSG, id, { type: 'stat', stat });
      const { id: ok } = await c.open((r) => r.op === 'attach');
      c.send(FrameType.OPENED, ok);
      // dropped may repeat (a slow follower loses output more than once).
      for (let i = 0; i < 3; i++) c.json(FrameType.MSG, ok, { type: 'dropped', bytes: 10 });
      c.json(FrameType.END, ok, { ok: true });
      c.onFrame((fr) => fr.type === FrameType.CANCEL && c.json(FrameType.END, fr.stream, { ok: false, code: 'CANCELLED', message: 'x' }));
    });
    const s = await connect(f);
    const read = s.open({ op: 'read', path: '/f' });
    const e = await read.ended;
    assert.equal(!e.ok && e.code, 'PROTOCOL');
    assert.match(!e.ok ? e.message : '', /a second MSG stat/);
    const attach = await s.call({ op: 'attach', pid: 5, follow: false }, 2000);
    assert.deepEqual(attach.end, { ok: true });
    assert.equal(attach.msgs.length, 3);
  });

  it('resizes coalesce: one waits per stream while OPENs are held or the socket is backed up', async () => {
    let conn: FakeConn | undefined;
    const f = await start(async (c) => {
      conn = c;
      await c.handshake();
    });
    const s = await connect(f);
    const c = conn!;
    const release = await s.quiesce(1000);
    const st = s.open({ op: 'exec', cmd: ['sh'], pty: { rows: 24, cols: 80 } });
    for (let i = 1; i <= 10_000; i++) st.resize(i, 80);
    release();
    const { id } = await c.open();
    await c.next((x) => x.type === FrameType.MSG && x.stream === id && JSON.parse(x.payload.toString()).rows === 10_000);
    const held = c.received.filter((x) => x.type === FrameType.MSG && x.stream === id).length;
    assert.equal(held, 1, `${held} resize MSGs sent for a held OPEN`);
    // The agent stops reading its port: what the host queues for it stays bounded.
    c.send(FrameType.OPENED, id);
    c.socket.pause();
    const n = 100_000;
    let maxQueued = 0;
    for (let i = 1; i <= n; i++) {
      st.resize(1 + (i % 1000), 100 + Math.floor(i / 1000));
      if (i % 1000 === 0) maxQueued = Math.max(maxQueued, sessionStats(s).outboxBytes);
    }
    let sent = 0;
    const last = new Promise<void>((resolve) =>
      c.onFrame((x) => {
        if (x.type !== FrameType.MSG || x.stream !== id) return;
        sent++;
        const size = JSON.parse(x.payload.toString()) as { rows: number; cols: number };
        if (size.rows === 1 + (n % 1000) && size.cols === 100 + n / 1000) resolve();
      }),
    );
    c.socket.resume();
    await withDeadline(last, 10_000, 'the latest size sent');
    assert.ok(sent < n / 4, `${sent} of ${n} resizes sent to an agent that did not read`);
    assert.ok(maxQueued < 1024, `queued ${maxQueued} bytes`);
  });

  it('leaving the events loop cancels the stream; a CANCEL never answered ends it PROTOCOL after the grace', async () => {
    let conn: FakeConn | undefined;
    const f = await start(async (c) => {
      conn = c;
      await c.handshake();
    });
    const s = await connectAgent(f.path, { timeoutMs: 3000, cancelGraceMs: 200 });
    sessions.push(s);
    const c = conn!;
    const st = s.open({ op: 'exec', cmd: ['yes'] });
    const { id } = await c.open();
    c.send(FrameType.OPENED, id);
    c.json(FrameType.MSG, id, { type: 'started', pid: 9 });
    for await (const ev of st.events) if (ev.kind === 'msg') break;
    await c.next((x) => x.type === FrameType.CANCEL && x.stream === id);
    const t0 = Date.now();
    const e = await st.ended;
    assert.equal(!e.ok && e.code, 'PROTOCOL');
    assert.match(!e.ok ? e.message : '', /no END within 200 ms of CANCEL/);
    assert.ok(Date.now() - t0 < 1500);
    assert.equal(sessionStats(s).streams, 0);
    // A stalled agent flushing late: its whole window of small DATA frames, then its END, within
    // the credit it held, are dropped and not counted (1,024 invalid frames would close the session).
    const before = sessionStats(s).invalidFrames;
    for (let i = 0; i < 2000; i++) c.data(id, 1, Buffer.alloc(100, 1));
    c.send(FrameType.EOF, id, Buffer.from([1]));
    c.json(FrameType.END, id, { ok: true, exitCode: 137, signal: 'KILL', timedOut: false, cancelled: true });
    const pong = async (): Promise<void> => {
      const p = s.ping(2000);
      const ping = await c.next((x) => x.type === FrameType.PING);
      c.send(FrameType.PONG, 0, ping.payload);
      await p;
    };
    // The PONG comes after them: once it is answered, they were handled.
    await pong();
    assert.equal(sessionStats(s).invalidFrames, before);
    assert.equal(sessionStats(s).closed, false);
    // After its END the stream is unknown again: counted.
    c.data(id, 1, Buffer.from('x'));
    await pong();
    assert.equal(sessionStats(s).invalidFrames, before + 1);
  });

  it('call() collects MSGs, and times out by cancelling', async () => {
    const f = await start(async (c) => {
      await c.handshake();
      const { id } = await c.open();
      c.json(FrameType.MSG, id, { type: 'entries', entries: [{ name: 'a', stat: { type: 'dir', size: 0, mode: 0o755, mtimeMs: 5 } }] });
      c.json(FrameType.END, id, { ok: true });
      const { id: slow } = await c.open();
      await c.next((x) => x.type === FrameType.CANCEL && x.stream === slow);
      c.json(FrameType.END, slow, { ok: false, code: 'CANCELLED', message: 'cancelled' });
    });
    const s = await connect(f);
    const r = await s.call({ op: 'list', path: '/' }, 2000);
    assert.deepEqual(r.end, { ok: true });
    assert.equal(r.msgs.length, 1);
    await assert.rejects(s.call({ op: 'ps' }, 200), { code: 'TIMEOUT' });
  });

  it('closes itself (GONE) when garbage passes 64 MiB, or invalid frames pass 1024', async () => {
    const f = await start(async (c) => {
      await c.handshake();
      const { req } = await c.open();
      if (req.path === '/garbage') {
        const zeros = Buffer.alloc(1 << 20);
        for (let i = 0; i < 66 && !c.closed; i++) if (!c.raw(zeros)) await new Promise((r) => c.socket.once('drain', r));
      } else for (let i = 0; i < 1100 && !c.closed; i++) c.send(0x7e, 0);
    });
    for (const path of ['/garbage', '/invalid']) {
      const s = await connect(f);
      const w = s.open({ op: 'watch', path });
      const e = await w.ended;
      assert.equal(!e.ok && e.code, 'GONE', path);
      assert.match(!e.ok ? e.message : '', /too much garbage/);
      await s.closed;
      await assert.rejects(s.ping(100), { code: 'UNAVAILABLE' });
      const late = s.open({ op: 'ps' });
      assert.equal((await late.ended).ok, false);
    }
  });
});
