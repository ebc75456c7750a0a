import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { AgentEnd, GuestEvent, GuestRequest, GuestStream } from '@forky/agent';
import { ForkyError, pollUntil, withDeadline } from '@forky/base';
import { openStream } from '@forky/bus';
import { subjects } from '@forky/contract';
import { Files, pty, spawn, type Calls, type DropReason, type WatchEvent } from '@forky/sdk';
import { BRIDGE_HOST, BRIDGE_VM, startBridge, type BridgeFixture } from '../helpers/bridge-fixture.js';
import type { FakeStream } from '../helpers/fake-guest.js';

/** The SDK's file watch and PTY processes over hostd's stream bridge (real nats-server, fake guest). */

const VM = BRIDGE_VM;

/** A guest `watch` stream whose events the test gives (the fake guest scripts none for watches). */
class WatchGuest implements GuestStream {
  readonly ended: Promise<AgentEnd>;
  cancelled = false;
  #queue: GuestEvent[] = [];
  #wake: (() => void) | undefined;
  #resolve!: (e: AgentEnd) => void;

  constructor(
    readonly id: number,
    readonly req: GuestRequest,
  ) {
    this.ended = new Promise((resolve) => (this.#resolve = resolve));
  }

  readonly events: AsyncIterable<GuestEvent> = {
    [Symbol.asyncIterator]: () => ({
      next: async (): Promise<IteratorResult<GuestEvent>> => {
        for (;;) {
          const ev = this.#queue.shift();
          if (ev) return { value: ev, done: false };
          await new Promise<void>((resolve) => (this.#wake = resolve));
        }
      },
    }),
  };

  /** Events as the agent sends them: one MSG `events` (hostile items too: the guest is ours to script). */
  send(events: unknown[]): void {
    this.#push({ kind: 'msg', msg: { type: 'events', events } as never });
  }

  push(ev: GuestEvent): void {
    this.#push(ev);
  }

  end(e: AgentEnd): void {
    this.#push({ kind: 'end', end: e });
    this.#resolve(e);
  }

  write(): Promise<void> {
    return Promise.reject(new Error('a watch takes no input'));
  }
  closeInput(): void {}
  resize(): void {}
  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.end({ ok: true });
  }

  #push(ev: GuestEvent): void {
    this.#queue.push(ev);
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

describe('SDK: file watch and PTY processes over the stream bridge (real nats-server, fake guest)', { timeout: 60_000 }, () => {
  let fixture: BridgeFixture | undefined;
  const watches: WatchGuest[] = [];
  /** Every stream the SDK opened, in order: bad input must add none. */
  const opened: Array<[string, unknown]> = [];
  const calls: Calls = {
    call: () => Promise.reject(new ForkyError('INTERNAL', 'no unary calls in this test')),
    stream: (endpoint, body, o = {}) => {
      opened.push([endpoint, body]);
      const st = openStream((fixture as BridgeFixture).client, subjects.host(BRIDGE_HOST, endpoint), body, {
        keepaliveMs: 300,
        silenceMs: 4000,
      });
      return o.signal
        ? Promise.race([st, new Promise<never>((_, no) => o.signal?.addEventListener('abort', () => no(o.signal?.reason)))])
        : st;
    },
  };
  const files = (): Files => new Files(calls, VM);
  const lastExec = (): FakeStream => (fixture as BridgeFixture).session.streams.at(-1) as FakeStream;
  const watchGuest = (n: number): Promise<WatchGuest> =>
    pollUntil(async () => watches[n], { timeoutMs: 5000, what: `guest watch #${n + 1}` });
  const isField = (field: string) => (e: ForkyError) => e.code === 'BAD_REQUEST' && e.details?.field === field;
  const isCode = (code: string) => (e: ForkyError) => e instanceof ForkyError && e.code === code;

  before(async () => {
    fixture = await startBridge([BRIDGE_HOST], { keepaliveMs: 300, cancelGraceMs: 1000 });
    // The server has hostd's subscriptions once their connection's flush returns: the first open finds them.
    await fixture.hostNc.flush();
    const session = fixture.session;
    const open = session.open.bind(session);
    // Watches get a guest of ours; everything else the shared fake.
    session.open = (req, o) => {
      if (req.op !== 'watch') return open(req, o);
      const w = new WatchGuest(100 + watches.length, req);
      watches.push(w);
      return w;
    };
  });
  after(() => fixture?.stop());

  it("watch yields the guest's events, skips items that are none, tells of drops, and ends on abort", async () => {
    const ac = new AbortController();
    const drops: DropReason[] = [];
    const w = await files().watch('/data', { recursive: true, signal: ac.signal, onDropped: (r) => drops.push(r) });
    assert.deepEqual(opened.at(-1), ['file.watch', { id: VM, path: '/data', recursive: true }]);
    const guest = await watchGuest(0);
    assert.deepEqual(guest.req, { op: 'watch', path: '/data', recursive: true });
    guest.send([{ kind: 'create', path: '/data/a' }, { kind: 7, path: '/data/x' }, null, { kind: 'modify', path: '/data/a' }]);
    guest.push({ kind: 'msg', msg: { type: 'dropped', bytes: 0 } });
    guest.send([{ kind: 'delete', path: '/data/a' }]);
    const got: WatchEvent[] = [];
    await withDeadline(
      (async () => {
        for await (const e of w) {
          got.push(e);
          if (got.length === 3) ac.abort();
        }
      })(),
      10_000,
      'the watch to end on abort',
    );
    assert.deepEqual(got, [
      { kind: 'create', path: '/data/a' },
      { kind: 'modify', path: '/data/a' },
      { kind: 'delete', path: '/data/a' },
    ]);
    assert.deepEqual(drops, ['guest']);
    assert.equal(guest.cancelled, true, "the abort stopped the guest's watch");
  });

  it('a failed watch end is an error with its code; bad input is refused, naming the field, before anything is sent', async () => {
    const w = await files().watch('/missing');
    (await watchGuest(watches.length - 1)).end({ ok: false, code: 'NOT_FOUND', message: '/missing: no such file' });
    await assert.rejects(async () => {
      for await (const _ of w) void _;
    }, isCode('NOT_FOUND'));
    const before = opened.length;
    await assert.rejects(files().watch(42 as unknown as string), isField('path'));
    await assert.rejects(files().watch('relative/p'), isField('path'));
    await assert.rejects(files().watch('/a\0b'), isField('path'));
    await assert.rejects(files().watch('/ok', { recursive: 'yes' as unknown as boolean }), isField('recursive'));
    await assert.rejects(spawn(calls, VM, ['cat'], { pty: { rows: 0, cols: 80 } }), isField('pty.rows'));
    await assert.rejects(spawn(calls, VM, ['cat'], { pty: { rows: 24, cols: 1.5 } }), isField('pty.cols'));
    // vm.pty() takes rows and cols themselves: its errors name them so.
    await assert.rejects(pty(calls, VM, undefined, { rows: 24, cols: 1001 }), isField('cols'));
    await assert.rejects(pty(calls, VM, undefined, { rows: 0, cols: 80 }), isField('rows'));
    assert.equal(opened.length, before, 'nothing was opened');
  });

  it("a PTY process: the guest's terminal is the size asked, keys go raw, resize reaches it, its exit code is the guest's", async () => {
    const p = await spawn(calls, VM, ['cat'], { pty: { rows: 24, cols: 80 } });
    const guest = lastExec();
    assert.deepEqual(guest.req, {
      op: 'exec',
      cmd: ['cat'],
      env: {},
      stdin: true,
      timeoutMs: 0,
      detach: false,
      pty: { rows: 24, cols: 80 },
    });
    const out: Buffer[] = [];
    const reading = (async () => {
      for await (const c of p) out.push(Buffer.from(c.bytes));
    })();
    // Ctrl-C, ESC and a NUL: bytes the terminal gets as they are.
    await p.write(new Uint8Array([3, 0x1b, 0x5b, 0x41, 0]));
    await pollUntil(async () => (Buffer.concat(out).length === 5 ? true : undefined), { timeoutMs: 5000, what: 'the echo' });
    assert.deepEqual([...Buffer.concat(guest.input)], [3, 0x1b, 0x5b, 0x41, 0]);
    assert.equal(p.resize(30, 100), true);
    await pollUntil(async () => (guest.resizes.length > 0 ? true : undefined), { timeoutMs: 5000, what: 'the resize' });
    assert.deepEqual(guest.resizes, [{ rows: 30, cols: 100 }]);
    assert.throws(() => p.resize(0, 80), isField('rows'));
    assert.throws(() => p.resize(24, 1001), isField('cols'));
    guest.end({ ok: true, exitCode: 3, signal: null, timedOut: false, cancelled: false });
    await withDeadline(reading, 5000, 'the output to end');
    assert.deepEqual(await p.wait(), { exitCode: 3, signal: null, timedOut: false, cancelled: false });
    assert.deepEqual(guest.resizes, [{ rows: 30, cols: 100 }], 'the bad sizes sent nothing');
  });

  it('vm.pty() runs a login shell with TERM=xterm; kill() ends it cancelled; a process without a PTY has no resize', async () => {
    const p = await pty(calls, VM, undefined, { rows: 40, cols: 120, env: { A: '1' } });
    const guest = lastExec();
    assert.deepEqual(guest.req.op === 'exec' && [guest.req.cmd, guest.req.env, guest.req.pty, guest.req.stdin], [
      ['/bin/sh', '-l'],
      { TERM: 'xterm', A: '1' },
      { rows: 40, cols: 120 },
      true,
    ]);
    p.kill();
    const exit = await withDeadline(p.wait(), 5000, 'the exit');
    assert.equal(exit.cancelled, true);
    assert.equal(exit.exitCode, 137);

    const plain = await spawn(calls, VM, ['cat'], { stdin: true });
    assert.throws(() => plain.resize(24, 80), isCode('INVALID_STATE'));
    await plain.closeStdin();
    assert.equal((await withDeadline(plain.wait(), 5000, 'the exit')).exitCode, 0, 'its stream was not ended by a resize');
  });

  it("a guest's own GONE (its session still open) is no hand-over: the watch fails INVALID_STATE at once, opened once", async () => {
    const n = watches.length;
    const before = opened.length;
    let drops = 0;
    const w = await files().watch('/g', { onDropped: () => drops++ });
    (await watchGuest(n)).end({ ok: false, code: 'GONE', message: 'hostile' } as never);
    const err = await withDeadline(
      (async () => {
        for await (const _ of w) void _;
      })().then(
        () => undefined,
        (e: unknown) => e,
      ),
      5000,
      'the watch to fail',
    );
    assert.ok(err instanceof ForkyError && err.code === 'INVALID_STATE' && /GONE: hostile/.test(err.message), String(err));
    assert.equal(opened.length - before, 1, 'opened once: no reopen');
    assert.equal(watches.length, n + 1);
    assert.equal(drops, 0);
  });

  // Last: it closes the (one) session, as a snapshot's hand-over does.
  it("watch follows the VM across a hand-over (its session ended: hostd's GONE): watched again, the gap told; close() ends it", async () => {
    const drops: DropReason[] = [];
    const w = await files().watch('/h', { onDropped: (r) => drops.push(r) });
    const first = await watchGuest(watches.length - 1);
    const seen: string[] = [];
    const reading = (async () => {
      for await (const e of w) {
        seen.push(e.path);
        if (e.path === '/h/after') w.close();
      }
    })();
    first.send([{ kind: 'create', path: '/h/before' }]);
    await pollUntil(async () => (seen.length === 1 ? true : undefined), { timeoutMs: 5000, what: 'the first event' });
    const n = watches.length;
    (fixture as BridgeFixture).session.close();
    first.end({ ok: false, code: 'GONE', message: 'the session closed' } as never);
    const second = await watchGuest(n);
    assert.deepEqual(second.req, first.req, 'the same watch, opened again');
    second.send([{ kind: 'create', path: '/h/after' }]);
    await withDeadline(reading, 10_000, 'the watch to end on close()');
    assert.deepEqual(seen, ['/h/before', '/h/after']);
    assert.deepEqual(drops, ['hand-over']);
    assert.equal(second.cancelled, true);
  });
});
