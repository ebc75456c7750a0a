import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connectAgent, SessionCache, type GuestSession } from '@forky/agent';
import { FrameType } from '@forky/agent/internal';
import { FakeAgent, type FakeConn } from '../helpers/fake-agent.js';

/** A fake guest whose connections answer `stat` until `silence` says otherwise (as an agent restarted in the guest does). */
async function statAgent(silence: (c: FakeConn) => boolean): Promise<FakeAgent> {
  return FakeAgent.start(async (c) => {
    await c.handshake();
    c.onFrame((f) => {
      if (f.type === FrameType.OPEN && !silence(c)) c.json(FrameType.END, f.stream, { ok: false, code: 'NOT_FOUND', message: '/' });
      if (f.type === FrameType.CANCEL && !silence(c)) c.json(FrameType.END, f.stream, { ok: false, code: 'CANCELLED', message: 'x' });
    });
  });
}

describe('agent session cache (hostd keeps one session per VM process)', { timeout: 20_000 }, () => {
  const fakes: FakeAgent[] = [];
  after(async () => {
    for (const f of fakes) await f.stop();
  });

  it('probes a quiet session; one that does not answer is closed and a new one (a new HELLO) made', async () => {
    const restarted = new Set<FakeConn>();
    const f = await statAgent((c) => restarted.has(c));
    fakes.push(f);
    const key = {};
    // quietMs -1: every reuse probes, so the test needs no wait for a session to go quiet.
    const cache = new SessionCache<object>({ quietMs: -1, probeMs: 300 });
    const connect = (): Promise<GuestSession> => connectAgent(f.path, { timeoutMs: 3000 });
    const s1 = await cache.get(key, connect);
    assert.equal(await cache.get(key, connect), s1, 'a session that answers its probe is reused');
    assert.equal(f.conns.length, 1);
    restarted.add(f.conns[0]!);
    const t0 = Date.now();
    const [a, b] = await Promise.all([cache.get(key, connect), cache.get(key, connect)]);
    assert.equal(a, b, 'callers during a probe share its outcome');
    assert.notEqual(a, s1);
    assert.ok(Date.now() - t0 < 2000);
    await s1.closed;
    assert.equal(f.conns.length, 2);
    assert.ok(f.conns[1]!.received.some((x) => x.type === FrameType.HELLO));
    assert.deepEqual((await a.call({ op: 'stat', path: '/' }, 2000)).end.ok, false);
    assert.equal(await cache.current(key), a);
  });

  it('closeAll() ends every live session, and one still connecting when it arrives', async () => {
    const f = await statAgent(() => false);
    fakes.push(f);
    const cache = new SessionCache<object>({ quietMs: 60_000, probeMs: 300 });
    const connect = (): Promise<GuestSession> => connectAgent(f.path, { timeoutMs: 3000 });
    const keys = [{}, {}, {}];
    const sessions = await Promise.all(keys.map((k) => cache.get(k, connect)));
    assert.equal(cache.liveCount, 3);
    const late = cache.get({}, connect);
    cache.closeAll();
    await Promise.all(sessions.map((s) => s.closed));
    await (
      await late
    ).closed;
    assert.equal(cache.liveCount, 0);
    assert.equal(cache.current(keys[0]!), undefined);
    // Later uses make new sessions (a second engine may use the same runtime).
    const again = await cache.get(keys[0]!, connect);
    assert.notEqual(again, sessions[0]);
    cache.close(keys[0]!);
    await again.closed;
  });
});
