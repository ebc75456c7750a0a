import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ForkyError, withDeadline } from '@forky/base';
import type { StreamChunk, StreamEnd } from '@forky/bus';
import { Files, spawn, type Calls, type StreamLike } from '@forky/sdk';

/** The SDK's hand-overs (streams ended GONE) on a fake transport of ours: how often, and how long, it opens again. */

/** A stream that yields `end` at once. */
function endedStream(end: StreamEnd, pid?: number): StreamLike {
  return {
    ...(pid === undefined ? {} : { pid }),
    async *[Symbol.asyncIterator](): AsyncGenerator<StreamChunk> {
      yield { kind: 'end', seq: 1, end };
    },
    write: () => Promise.reject(new Error('no input')),
    closeInput: async () => undefined,
    cancel: () => undefined,
    close: () => undefined,
  };
}

const GONE: StreamEnd = { ok: false, code: 'GONE', message: 'the session closed' };

/** Calls whose streams the test gives, counting opens per endpoint. */
function fakeCalls(open: (endpoint: string, n: number, signal?: AbortSignal) => Promise<StreamLike>): {
  calls: Calls;
  opens: Map<string, number>;
} {
  const opens = new Map<string, number>();
  const calls: Calls = {
    call: () => Promise.reject(new ForkyError('NOT_FOUND', 'no such process')),
    stream: (endpoint, _body, o = {}) => {
      const n = (opens.get(endpoint) ?? 0) + 1;
      opens.set(endpoint, n);
      return open(endpoint, n, o.signal);
    },
  };
  return { calls, opens };
}

describe('SDK hand-overs: a stream that keeps ending GONE is opened again at a bounded rate', { timeout: 30_000 }, () => {
  it('a watch whose every stream ends GONE at once: at most one open per 250 ms, onDropped as often', async () => {
    const { calls, opens } = fakeCalls(async () => endedStream(GONE));
    let drops = 0;
    const w = await new Files(calls, 'vm-1').watch('/h', { onDropped: () => drops++ });
    const reading = (async () => {
      for await (const _ of w) void _;
    })().catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 1500));
    const n = opens.get('file.watch') ?? 0;
    // Old code: one open per event-loop turn (R3 measured 1552 in 3 s).
    assert.ok(n >= 2 && n <= 8, `opens in 1.5 s: ${n}`);
    assert.ok(drops <= n, `onDropped ${drops}`);
    w.close();
    assert.equal(await withDeadline(reading, 2000, 'the watch to end on close()'), undefined, 'close() ends it without an error');
  });

  it('close() during a reopen that keeps failing (the VM not back yet) stops it at once', async () => {
    const { calls, opens } = fakeCalls(async (_e, n, signal) => {
      if (n === 1) return endedStream(GONE);
      signal?.throwIfAborted();
      throw new ForkyError('UNAVAILABLE', 'the VM is being handed over');
    });
    const w = await new Files(calls, 'vm-1').watch('/h');
    const reading = (async () => {
      for await (const _ of w) void _;
    })();
    // Polled: the reopen's tries have no event of their own.
    const t0 = Date.now();
    while ((opens.get('file.watch') ?? 0) < 3 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.ok((opens.get('file.watch') ?? 0) >= 3, 'the reopen is retrying');
    const closedAt = Date.now();
    w.close();
    // Old code: the reopen went on for its 120 s deadline.
    await withDeadline(reading, 1000, 'the watch to end on close() during a reopen');
    const tries = opens.get('file.watch');
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(opens.get('file.watch'), tries, 'no open after close()');
    assert.ok(Date.now() - closedAt < 1600);
  });

  it('a process whose every attach ends GONE at once: at most one attach per 250 ms', async () => {
    let exited = false;
    const { calls, opens } = fakeCalls(async (endpoint) =>
      endpoint === 'exec.start'
        ? endedStream(GONE, 42)
        : endedStream(exited ? { ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false } : GONE),
    );
    const p = await spawn(calls, 'vm-1', ['sleep', '9']);
    const waiting = p.wait();
    await new Promise((r) => setTimeout(r, 1500));
    const n = opens.get('proc.attach') ?? 0;
    assert.ok(n >= 2 && n <= 8, `attaches in 1.5 s: ${n}`);
    exited = true;
    assert.equal((await withDeadline(waiting, 2000, 'the exit')).exitCode, 0);
  });
});
