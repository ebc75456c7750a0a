import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { ForkyError } from '@forky/base';
import {
  buildProgram,
  collectEnv,
  encodeOutput,
  exitCodeOf,
  formatWatchEvent,
  parseCp,
  parseSignal,
  type CliStream,
  type Session,
  type StreamChunk,
} from '@forky/cli';

const VM = 'vm-aaaaaaaaaaaa';

class ExitError extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** A stream that yields `chunks` (or what a generator of them yields) and records what is written to it. */
function fakeStream(
  chunks: StreamChunk[] | (() => AsyncIterable<StreamChunk>),
  pid?: number,
): CliStream & { written: Uint8Array[]; cancelled: boolean } {
  const s = {
    pid,
    written: [] as Uint8Array[],
    cancelled: false,
    async *[Symbol.asyncIterator]() {
      yield* typeof chunks === 'function' ? chunks() : chunks;
    },
    write: async (b: Uint8Array) => void s.written.push(b),
    closeInput: async () => undefined,
    resize: () => undefined,
    cancel: () => void (s.cancelled = true),
    close: () => undefined,
  };
  return s;
}

const out = (kind: 'stdout' | 'stderr', text: string | Uint8Array, seq: number): StreamChunk => ({
  kind,
  seq,
  bytes: typeof text === 'string' ? Buffer.from(text) : text,
});
const end = (seq: number, e: Record<string, unknown>): StreamChunk => ({ kind: 'end', seq, end: { ok: true, ...e } });
/** A file's bytes, as a `file.read` stream carries them. */
const data = (text: string, seq: number): StreamChunk => ({ kind: 'data', seq, bytes: Buffer.from(text) });

interface Ran {
  calls: Array<[string, unknown]>;
  streams: Array<[string, Record<string, unknown>]>;
  fakes: Array<{ cancelled: boolean }>;
  stdout: string;
  stderr: string;
  code?: number;
}

/** Runs `forky ARGS` on a session whose streams yield `chunks` and whose unary calls answer `reply`. */
async function run(
  args: string[],
  opts: { chunks?: StreamChunk[] | (() => AsyncIterable<StreamChunk>); pid?: number; reply?: unknown } = {},
): Promise<Ran> {
  const r: Ran = { calls: [], streams: [], fakes: [], stdout: '', stderr: '' };
  const session: Session = {
    call: async (endpoint, body) => (r.calls.push([endpoint, body]), opts.reply as never),
    uploadApps: async () => [],
    raw: async () => undefined,
    stream: async (endpoint, body) => {
      r.streams.push([endpoint, body as Record<string, unknown>]);
      const f = fakeStream(opts.chunks ?? [], opts.pid);
      r.fakes.push(f);
      return f;
    },
    close: async () => undefined,
  };
  const text = (s: string | Uint8Array): string => (typeof s === 'string' ? s : Buffer.from(s).toString('latin1'));
  const write = process.stdout.write.bind(process.stdout);
  const writeErr = process.stderr.write.bind(process.stderr);
  // The test runner reports on stdout too, through a composed stream, at any time: its writes go through.
  const ours = (): boolean => !new Error().stack?.includes('node:internal/streams/compose');
  process.stdout.write = ((s: string | Uint8Array) => (ours() ? ((r.stdout += text(s)), true) : write(s))) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => ((r.stderr += text(s)), true)) as typeof process.stderr.write;
  try {
    const program = buildProgram({
      openSession: async () => session,
      exit: (code) => {
        throw new ExitError(code);
      },
    });
    await program.parseAsync(['node', 'forky', ...args]);
  } catch (e) {
    if (!(e instanceof ExitError)) throw e;
    r.code = e.code;
  } finally {
    process.stdout.write = write;
    process.stderr.write = writeErr;
  }
  return r;
}

describe('sandbox CLI: arguments', () => {
  it('--env K=V builds the environment; a bad one names the flag', () => {
    assert.deepEqual(collectEnv('B=x=y', collectEnv('A=1', {})), { A: '1', B: 'x=y' });
    assert.deepEqual(collectEnv('EMPTY=', {}), { EMPTY: '' });
    for (const bad of ['NOEQUALS', '=v', '1A=x', 'A-B=x']) assert.throws(() => collectEnv(bad, {}), /--env must be KEY=VALUE/);
  });

  it('cp: exactly one side is VM:/path; - is the local stdin or stdout; a local path may hold a colon', () => {
    assert.deepEqual(parseCp('./x', `${VM}:/data/x`), { direction: 'in', vm: VM, remote: '/data/x', local: './x' });
    assert.deepEqual(parseCp(`${VM}:/data/x`, './x'), { direction: 'out', vm: VM, remote: '/data/x', local: './x' });
    assert.deepEqual(parseCp('-', `${VM}:/f`), { direction: 'in', vm: VM, remote: '/f', local: '-' });
    assert.deepEqual(parseCp(`${VM}:/f`, '-'), { direction: 'out', vm: VM, remote: '/f', local: '-' });
    assert.deepEqual(parseCp('a:b', `${VM}:/f`), { direction: 'in', vm: VM, remote: '/f', local: 'a:b' });
    const badRequest = (re: RegExp) => (e: unknown) => e instanceof ForkyError && e.code === 'BAD_REQUEST' && re.test(e.message);
    assert.throws(() => parseCp(`${VM}:/a`, `${VM}:/b`), badRequest(/exactly one side.*both/));
    assert.throws(() => parseCp('./a', './b'), badRequest(/exactly one side.*neither/));
    assert.throws(() => parseCp('./a', `${VM}:relative`), badRequest(/must be absolute/));
  });

  it('--signal takes a name, SIG-name or number of the signals the agent sends', () => {
    assert.equal(parseSignal('term'), 'TERM');
    assert.equal(parseSignal('SIGKILL'), 'KILL');
    assert.equal(parseSignal('9'), 'KILL');
    assert.throws(() => parseSignal('SEGV'), /--signal must be one of/);
  });
});

describe('sandbox CLI: output and exit codes', () => {
  it('--json output is UTF-8 text when valid, base64 (and says so) otherwise', () => {
    assert.deepEqual(encodeOutput('stdout', Buffer.from('héllo\n')), { stdout: 'héllo\n' });
    assert.deepEqual(encodeOutput('stderr', Buffer.from([0xff, 0x00, 0x80])), { stderr: '/wCA', stderrEncoding: 'base64' });
    assert.deepEqual(encodeOutput('stdout', Buffer.alloc(0)), { stdout: '' });
  });

  it("exit codes: the command's own, 124 past --timeout, 128+N by a signal, 130 after our Ctrl-C; a failed stream throws", () => {
    assert.equal(exitCodeOf({ ok: true, exitCode: 3 }), 3);
    assert.equal(exitCodeOf({ ok: true, exitCode: 124, timedOut: true }), 124);
    assert.equal(exitCodeOf({ ok: true, timedOut: true }), 124);
    assert.equal(exitCodeOf({ ok: true, signal: 'KILL' }), 137);
    assert.equal(exitCodeOf({ ok: true, signal: 'TERM', exitCode: 143 }), 143);
    assert.equal(exitCodeOf({ ok: true, exitCode: 137, cancelled: true }, true), 130);
    assert.equal(exitCodeOf({ ok: true, exitCode: 137, cancelled: true }, false), 137);
    assert.throws(
      () => exitCodeOf({ ok: false, code: 'NOT_FOUND', message: 'VM gone' }),
      (e: unknown) => e instanceof ForkyError && e.code === 'NOT_FOUND',
    );
    assert.throws(() => exitCodeOf({ ok: false, code: 'IS_DIR', message: '/x is a directory' }), /^Error: IS_DIR: \/x is a directory$/);
  });

  it('watch prints `kind path` lines, or one JSON object a line', () => {
    assert.equal(formatWatchEvent({ kind: 'create', path: '/d/a' }, false), 'create /d/a\n');
    assert.equal(formatWatchEvent({ kind: 'delete', path: '/d/a' }, true), '{"kind":"delete","path":"/d/a"}\n');
  });
});

describe('sandbox CLI: commands into requests (no cluster)', () => {
  afterEach(() => {
    process.exitCode = undefined;
  });

  it("vm exec opens exec.start with its options and a key, and exits with the command's code", async () => {
    const r = await run(
      ['--json', 'vm', 'exec', VM, '--timeout', '2000', '--env', 'A=1', '--cwd', '/tmp', '--user', 'nobody', '--', 'sh', '-c', 'x'],
      {
        chunks: [out('stdout', 'run\n', 1), out('stderr', Buffer.from([0xff]), 2), end(3, { exitCode: 3 })],
      },
    );
    const [endpoint, body] = r.streams[0] as [string, Record<string, unknown>];
    assert.equal(endpoint, 'exec.start');
    const { key, stdin, ...rest } = body;
    assert.deepEqual(rest, {
      id: VM,
      cmd: ['sh', '-c', 'x'],
      env: { A: '1' },
      cwd: '/tmp',
      user: 'nobody',
      timeoutMs: 2000,
      detach: false,
    });
    assert.match(String(key), /^exec-[a-z0-9]{16}$/);
    assert.equal(stdin, false, 'the test runner’s stdin is a socket, not a pipe of data');
    assert.deepEqual(JSON.parse(r.stdout), { exitCode: 3, stdout: 'run\n', stderr: '/w==', stderrEncoding: 'base64' });
    assert.equal(process.exitCode, 3);
  });

  it('vm exec without --json writes the bytes as they are; 124 on its timeout, said on stderr', async () => {
    const r = await run(['vm', 'exec', VM, '--', 'sleep', '9'], {
      chunks: [out('stdout', 'a', 1), out('stderr', 'b', 2), end(3, { exitCode: 124, timedOut: true })],
    });
    assert.equal(r.stdout, 'a');
    assert.match(r.stderr, /^bforky: TIMEOUT: the command ran past its 30000 ms deadline/);
    assert.equal(r.streams[0]?.[1].timeoutMs, 30_000, 'no option means 30 s, as before');
    assert.equal(process.exitCode, 124);
  });

  it('--exec-timeout is kept as an alias; each exec has its own key; --detach prints the pid and has no deadline', async () => {
    const a = await run(['vm', 'exec', VM, '--exec-timeout', '1500', '--', 'true'], { chunks: [end(1, { exitCode: 0 })] });
    const b = await run(['vm', 'exec', VM, '--', 'true'], { chunks: [end(1, { exitCode: 0 })] });
    assert.equal(a.streams[0]?.[1].timeoutMs, 1500);
    assert.notEqual(a.streams[0]?.[1].key, b.streams[0]?.[1].key);
    const d = await run(['vm', 'exec', VM, '--detach', '--', 'sleep', '100'], { pid: 42 });
    assert.equal(d.stdout, '42\n');
    assert.equal(d.streams[0]?.[1].detach, true);
    assert.equal(d.streams[0]?.[1].timeoutMs, 0);
  });

  it('a failed stream says its code and exits 1; bad --env or --timeout exit 2 before anything is sent', async () => {
    const f = await run(['vm', 'exec', VM, '--', 'true'], {
      chunks: [{ kind: 'end', seq: 1, end: { ok: false, code: 'NOT_FOUND', message: 'no VM' } }],
    });
    assert.equal(f.code, 1);
    assert.match(f.stderr, /forky: NOT_FOUND: no VM/);
    const env = await run(['vm', 'exec', VM, '--env', 'oops', '--', 'true']);
    assert.equal(env.code, 2);
    assert.match(env.stderr, /--env must be KEY=VALUE/);
    assert.deepEqual(env.streams, []);
    const t = await run(['vm', 'exec', VM, '--timeout', 'soon', '--', 'true']);
    assert.equal(t.code, 2);
    assert.deepEqual(t.streams, []);
  });

  it('vm ps, kill and logs send what they are asked', async () => {
    const proc = { pid: 7, cmd: ['sleep', '100'], detached: true, pty: false, running: true, exitCode: null, startedAtMs: 0 };
    const ps = await run(['vm', 'ps', VM], { reply: { processes: [proc] } });
    assert.deepEqual(ps.calls, [['proc.list', { id: VM }]]);
    assert.match(ps.stdout, /^PID +STATE +DETACHED +PTY +STARTED +CMD\n7 +running +yes +no +1970-01-01T00:00:00.000Z +sleep 100\n$/);
    const kill = await run(['vm', 'kill', VM, '7', '--signal', 'KILL'], { reply: {} });
    assert.deepEqual(kill.calls, [['proc.signal', { id: VM, pid: 7, signal: 'KILL' }]]);
    const dflt = await run(['vm', 'kill', VM, '7'], { reply: {} });
    assert.deepEqual(dflt.calls, [['proc.signal', { id: VM, pid: 7, signal: 'TERM' }]]);
    assert.equal((await run(['vm', 'kill', VM, 'x'])).code, 2);
    assert.equal((await run(['vm', 'kill', VM, '7', '--signal', 'SEGV'])).code, 2);
    const logs = await run(['vm', 'logs', VM, '7', '--follow'], {
      chunks: [{ kind: 'event', seq: 1, event: { type: 'dropped', bytes: 10 } }, out('stdout', 'tail\n', 2), end(3, { exitCode: 0 })],
    });
    assert.deepEqual(logs.streams, [['proc.attach', { id: VM, pid: 7, follow: true }]]);
    assert.equal(logs.stdout, 'tail\n');
    assert.match(logs.stderr, /10 bytes of earlier output were dropped/);
  });

  it('vm watch prints the events; cp refuses two local or two remote sides with exit 2', async () => {
    const w = await run(['vm', 'watch', VM, '/d', '--recursive'], {
      chunks: [{ kind: 'event', seq: 1, event: { type: 'events', events: [{ path: '/d/a', kind: 'create' }] } }, end(2, {})],
    });
    assert.deepEqual(w.streams, [['file.watch', { id: VM, path: '/d', recursive: true }]]);
    assert.equal(w.stdout, 'create /d/a\n');
    const cp = await run(['cp', './a', './b']);
    assert.equal(cp.code, 2);
    assert.match(cp.stderr, /BAD_REQUEST: cp: exactly one side is VM:\/path/);
  });
});

describe('sandbox CLI: a hostile guest', () => {
  afterEach(() => {
    process.exitCode = undefined;
  });

  const OSC52 = '\x1b]52;c;aGk=\x07';

  it('watch and ps escape what the guest names: C0, DEL, C1 and backslash; JSON escapes C1 too', async () => {
    assert.equal(
      formatWatchEvent({ kind: 'create', path: `/d/${OSC52}\nmodify /etc/x\\y\x7f\u009b` }, false),
      'create /d/\\x1b]52;c;aGk=\\x07\\x0amodify /etc/x\\\\y\\x7f\\x9b\n',
    );
    assert.equal(formatWatchEvent({ kind: 'create', path: '/\u0085\u009b' }, true), '{"kind":"create","path":"/\\u0085\\u009b"}\n');
    const proc = { pid: 7, cmd: ['sh', `-c${OSC52}`, 'a\nb'], detached: false, pty: false, running: true, exitCode: null, startedAtMs: 0 };
    const ps = await run(['vm', 'ps', VM], { reply: { processes: [proc] } });
    assert.match(ps.stdout, /sh -c\\x1b\]52;c;aGk=\\x07 a\\x0ab\n$/);
    assert.ok(!ps.stdout.includes('\x1b') && !ps.stdout.includes('\x07'), 'no raw ESC or BEL');
    const psJson = await run(['--json', 'vm', 'ps', VM], { reply: { processes: [{ ...proc, cmd: ['\u009b2J'] }] } });
    assert.match(psJson.stdout, /"\\u009b2J"/);
    assert.doesNotMatch(psJson.stdout, /\u009b/);
  });

  it("an agent's end message, an error, --json output and a dropped note reach the terminal escaped", async () => {
    const f = await run(['vm', 'exec', VM, '--', 'true'], {
      chunks: [{ kind: 'end', seq: 1, end: { ok: false, code: 'IO', message: `${OSC52}boom\nforky: all fine` } }],
    });
    assert.equal(f.code, 1);
    assert.equal(f.stderr, 'forky: IO: \\x1b]52;c;aGk=\\x07boom\\x0aforky: all fine\n');
    const j = await run(['--json', 'vm', 'exec', VM, '--', 'true'], {
      chunks: [out('stdout', '\u009b31m\u0085', 1), end(2, { exitCode: 0 })],
    });
    assert.doesNotMatch(j.stdout, /[\u0080-\u009f]/);
    assert.equal(JSON.parse(j.stdout).stdout, '\u009b31m\u0085', 'the same text, once parsed');
    const logs = await run(['vm', 'logs', VM, '7'], {
      chunks: [{ kind: 'event', seq: 1, event: { type: 'dropped', bytes: '\x1b[2J' } }, end(2, {})],
    });
    assert.match(logs.stderr, /forky: \\x1b\[2J bytes of earlier output/);
  });

  it('exec --json holds at most 64 MiB of output: past it the command is cancelled and it fails, clearly', async () => {
    const mib = Buffer.alloc(1 << 20, 'x');
    let sent = 0;
    const r = await run(['--json', 'vm', 'exec', VM, '--', 'yes'], {
      chunks: async function* () {
        for (; sent < 1000; sent++) yield out(sent % 2 ? 'stderr' : 'stdout', mib, sent + 1);
        yield end(1001, { exitCode: 0 });
      },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^forky: CAPACITY: the command wrote more than 64 MiB; --json holds no more/);
    assert.equal(r.stdout, '');
    assert.equal(r.fakes[0]?.cancelled, true);
    assert.ok(sent <= 65, `it stopped reading at once, not after ${sent} MiB`);
  });

  describe('cp out to a destination that fails', () => {
    const realCreate = fs.createWriteStream;
    afterEach(() => {
      fs.createWriteStream = realCreate;
    });
    const fileOut = (dst: string, chunks: StreamChunk[]) =>
      run(['cp', `${VM}:/data/f`, dst], { reply: { stat: { type: 'file', size: 3, mode: 0o644 } }, chunks });
    const dst = path.join(os.tmpdir(), `fk-cp-${process.pid}-never-made`);

    it('fails at once when the destination was destroyed before a write (it fires no drain or error)', { timeout: 10_000 }, async () => {
      // A local stream that takes one write and then dies (a disk gone, a closed pipe).
      fs.createWriteStream = (() =>
        new Writable({
          write(_c, _e, cb) {
            cb();
            this.destroy();
          },
        })) as unknown as typeof fs.createWriteStream;
      const r = await fileOut(dst, [data('a', 1), data('b', 2), end(3, { bytes: 2 })]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^forky: INVALID_STATE: the output is closed/);
      assert.equal(r.fakes[0]?.cancelled, true, 'and the read in the guest is cancelled');
    });

    it('fails when the destination is closed while we wait for it to drain', { timeout: 10_000 }, async () => {
      fs.createWriteStream = (() =>
        new Writable({
          highWaterMark: 1,
          write() {
            setImmediate(() => this.destroy());
          },
        })) as unknown as typeof fs.createWriteStream;
      const r = await fileOut(dst, [data('abc', 1), end(2, { bytes: 3 })]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^forky: INVALID_STATE: the output is closed/);
    });
  });

  it('Ctrl-C in cp exits 130, as in exec; a failing guest tar is a coded error', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fk-cp-int-'));
    try {
      const interrupted = (e: Record<string, unknown>, first = out('stdout', 'part', 1)) =>
        async function* (): AsyncIterable<StreamChunk> {
          yield first;
          process.emit('SIGINT');
          yield end(2, e);
        };
      const file = await run(['cp', `${VM}:/data/f`, path.join(dir, 'f')], {
        reply: { stat: { type: 'file', size: 9, mode: 0o644 } },
        chunks: interrupted({ cancelled: true, bytes: 4 }, data('part', 1)),
      });
      assert.equal(file.code, undefined, file.stderr);
      assert.equal(process.exitCode, 130);
      assert.match(file.stderr, /^forky: cancelled \(Ctrl-C\)/);
      assert.equal(file.fakes[0]?.cancelled, true);
      process.exitCode = undefined;
      const tree = await run(['cp', `${VM}:/data/tree`, path.join(dir, 'tree')], {
        reply: { stat: { type: 'dir', size: 0, mode: 0o755 } },
        chunks: interrupted({ exitCode: 137, cancelled: true }),
      });
      assert.equal(tree.code, undefined, tree.stderr);
      assert.equal(process.exitCode, 130);
      process.exitCode = undefined;
      const exec = await run(['vm', 'exec', VM, '--', 'sleep', '9'], { chunks: interrupted({ exitCode: 137, cancelled: true }) });
      assert.equal(exec.code, undefined);
      assert.equal(process.exitCode, 130);
      process.exitCode = undefined;
      const failed = await run(['cp', `${VM}:/data/tree`, path.join(dir, 'tree2')], {
        reply: { stat: { type: 'dir', size: 0, mode: 0o755 } },
        chunks: [out('stderr', 'tar: /data/tree: Permission denied\n', 1), end(2, { exitCode: 1 })],
      });
      assert.equal(failed.code, 1);
      assert.equal(failed.stderr, 'forky: INVALID_STATE: tar -c in the guest exited 1: tar: /data/tree: Permission denied\n');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('vm exec across a snapshot of its VM', () => {
  it('follows the command by pid once its stream ends GONE, printing nothing twice and nothing lost', async () => {
    let opened = 0;
    async function* exec(): AsyncIterable<StreamChunk> {
      yield out('stdout', 'one\n', 1);
      yield { kind: 'end', seq: 2, end: { ok: false, code: 'GONE', message: 'the VM was handed to a new process' } };
    }
    // The process's buffer lost its first 2 bytes: it replays from byte 2 of "one\n".
    async function* attach(): AsyncIterable<StreamChunk> {
      yield { kind: 'event', seq: 1, event: { type: 'dropped', bytes: 2 } };
      yield out('stdout', 'e\ntw', 2);
      yield out('stderr', 'o\n', 3);
      yield end(4, { exitCode: 3 });
    }
    const r = await run(['vm', 'exec', VM, '--', 'sh'], { pid: 42, chunks: () => (opened++ === 0 ? exec() : attach()) });
    assert.deepEqual(
      r.streams.map(([e, b]) => [e, e === 'proc.attach' ? b : undefined]),
      [
        ['exec.start', undefined],
        ['proc.attach', { id: VM, pid: 42, follow: true }],
      ],
    );
    assert.equal(r.stdout, 'one\ntw');
    assert.equal(r.stderr, 'o\n');
    assert.equal(process.exitCode, 3, 'the exit code the attach saw');
    process.exitCode = undefined;
  });
});
