import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { buildProgram, type CliStream, type Session, type StreamChunk } from '@forky/cli';

/** `forky vm shell` and `vm watch` on the SDK's PTY process and watch, over a session of our own (no cluster). */

const VM = 'vm-aaaaaaaaaaaa';
/** Whether the CLI passes our stdin on (a pipe or a file, as under some runners): the body says so. */
const stdinPassed = ((): boolean => {
  if (process.stdin.isTTY) return true;
  try {
    const st = fs.fstatSync(0);
    return st.isFIFO() || st.isFile();
  } catch {
    return false;
  }
})();

interface Fake extends CliStream {
  cancelled: boolean;
  resizes: Array<[number, number]>;
}

/** A stream that yields `head`, then (if `untilCancel`) waits for cancel() and ends as the host would. */
function fakeStream(head: StreamChunk[], last: StreamChunk | 'untilCancel', onCancel: () => void): Fake {
  let cancelled!: () => void;
  const gotCancel = new Promise<void>((resolve) => (cancelled = resolve));
  const s: Fake = {
    pid: 9,
    cancelled: false,
    resizes: [],
    async *[Symbol.asyncIterator]() {
      yield* head;
      if (last !== 'untilCancel') return yield last;
      await gotCancel;
      yield { kind: 'end', seq: 99, end: { ok: true, exitCode: 137, signal: 'KILL', timedOut: false, cancelled: true } };
    },
    write: async () => undefined,
    closeInput: async () => undefined,
    resize: (rows, cols) => void s.resizes.push([rows, cols]),
    cancel: () => {
      s.cancelled = true;
      cancelled();
      onCancel();
    },
    close: () => undefined,
  };
  return s;
}

/** Runs `forky ARGS` on a session whose one stream is `fake` (made once the open comes); calls `during` once it is open. */
async function run(args: string[], make: () => Fake, during?: (f: Fake) => void) {
  const r = { streams: [] as Array<[string, Record<string, unknown>]>, stdout: '', stderr: '', fake: undefined as Fake | undefined };
  const session: Session = {
    call: async () => ({}) as never,
    uploadApps: async () => [],
    raw: async () => undefined,
    stream: async (endpoint, body) => {
      r.streams.push([endpoint, body as Record<string, unknown>]);
      r.fake = make();
      if (during) setImmediate(() => during(r.fake as Fake));
      return r.fake;
    },
    close: async () => undefined,
  };
  const write = process.stdout.write.bind(process.stdout);
  const writeErr = process.stderr.write.bind(process.stderr);
  const ours = (): boolean => !new Error().stack?.includes('node:internal/streams/compose');
  const text = (s: string | Uint8Array): string => (typeof s === 'string' ? s : Buffer.from(s).toString('latin1'));
  process.stdout.write = ((s: string | Uint8Array, ...rest: unknown[]) => {
    if (!ours()) return write(s);
    r.stdout += text(s);
    // writeOut waits for a callback-less write to say true: it does.
    void rest;
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => ((r.stderr += text(s)), true)) as typeof process.stderr.write;
  try {
    const exit = (code: number): never => {
      throw new Error(`exit ${code}: ${r.stderr}`);
    };
    await buildProgram({ openSession: async () => session, exit }).parseAsync(['node', 'forky', ...args]);
  } finally {
    process.stdout.write = write;
    process.stderr.write = writeErr;
  }
  return r;
}

/** Runs the handlers the command added for `sig` (process.emit would run the test runner's too). */
function signal(sig: 'SIGINT' | 'SIGTERM', baseline: Set<unknown>): void {
  for (const l of process.listeners(sig)) if (!baseline.has(l)) (l as (s: string) => void)(sig);
}

const out = (text: string, seq: number): StreamChunk => ({ kind: 'stdout', seq, bytes: Buffer.from(text) });

describe('CLI vm shell and vm watch on the SDK', { timeout: 10_000 }, () => {
  afterEach(() => {
    process.exitCode = undefined;
  });

  it('vm shell opens a keyed PTY exec of the terminal size with TERM, prints its output raw, exits with its code', async () => {
    const r = await run(['vm', 'shell', VM, '--env', 'A=1'], () =>
      fakeStream([out('\x1b[1mhi', 1)], { kind: 'end', seq: 2, end: { ok: true, exitCode: 5 } }, () => undefined),
    );
    assert.equal(r.streams.length, 1);
    const [endpoint, body] = r.streams[0] as [string, Record<string, unknown>];
    assert.equal(endpoint, 'exec.start');
    const { key, ...rest } = body;
    assert.match(String(key), /^shell/);
    assert.deepEqual(rest, {
      id: VM,
      cmd: ['/bin/sh', '-l'],
      env: { TERM: process.env.TERM || 'xterm', A: '1' },
      stdin: stdinPassed,
      timeoutMs: 0,
      detach: false,
      pty: { rows: 24, cols: 80 },
    });
    assert.equal(r.stdout, '\x1b[1mhi', "a PTY's output is the guest's terminal: passed on as it is");
    assert.equal(process.exitCode, 5);
  });

  it('SIGTERM ends the guest side too: cancelled, exit 137 as the guest says; a resize reaches the PTY', async () => {
    const baseline = new Set<unknown>(process.listeners('SIGTERM'));
    const r = await run(
      ['vm', 'shell', VM, '--', 'top'],
      () => fakeStream([out('x', 1)], 'untilCancel', () => undefined),
      () => {
        process.stdout.emit('resize');
        signal('SIGTERM', baseline);
      },
    );
    assert.equal(r.fake?.cancelled, true);
    assert.deepEqual(r.fake?.resizes, [[24, 80]]);
    assert.equal((r.streams[0]?.[1] as { cmd: string[] }).cmd.join(' '), 'top');
    assert.equal(process.exitCode, 137);
    assert.equal(process.listenerCount('SIGTERM'), baseline.size, 'its handler is gone');
  });

  it('vm watch prints each event as it comes, says when some were dropped, and exits 130 after Ctrl-C', async () => {
    const baseline = new Set<unknown>(process.listeners('SIGINT'));
    const ev = (seq: number, event: Record<string, unknown>): StreamChunk => ({ kind: 'event', seq, event: event as never });
    const r = await run(
      ['--json', 'vm', 'watch', VM, '/d'],
      () =>
        fakeStream(
          [ev(1, { type: 'events', events: [{ kind: 'move', path: '/d/\x1bx' }] }), ev(2, { type: 'dropped', bytes: 1 })],
          'untilCancel',
          () => undefined,
        ),
      () => signal('SIGINT', baseline),
    );
    assert.deepEqual(r.streams, [['file.watch', { id: VM, path: '/d', recursive: false }]]);
    assert.deepEqual(JSON.parse(r.stdout), { kind: 'move', path: '/d/\x1bx' });
    assert.match(r.stderr, /some events were dropped/);
    assert.equal(r.fake?.cancelled, true, "Ctrl-C stopped the guest's watch");
    assert.equal(process.exitCode, 130);
  });
});
