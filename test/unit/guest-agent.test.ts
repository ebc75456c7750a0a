import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DeadlineError, ForkyError } from '@forky/base';
import { BoundedLineSplitter, GuestAgentClient, GuestAgentError, OverlongLine } from '@forky/qemu/internal';

/**
 * A fake guest agent of our own that behaves like qemu-ga on the wire: 0xFF resets its parser
 * (and earns a parse error reply), guest-sync-delimited answers after a 0xFF, no ids.
 */
async function fakeAgent(opts: { staleBeforeSync?: string; ignoreFirstSyncs?: number; hugeOutBytes?: number }) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fqga-'));
  const sock = path.join(dir, 'qga.sock');
  let statusCalls = 0;
  let ignored = 0;
  const server = net.createServer((s) => {
    if (opts.staleBeforeSync) s.write(opts.staleBeforeSync);
    let buf = Buffer.alloc(0);
    // Like qemu-ga, one request at a time: the next is read only once a huge reply has gone out.
    let busy: Promise<void> = Promise.resolve();
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      busy = busy.then(() => serve());
    });
    const serve = async (): Promise<void> => {
      for (;;) {
        if (buf[0] === 0xff) {
          buf = buf.subarray(1);
          s.write('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\xff\'"}}\n');
          continue;
        }
        const nl = buf.indexOf(0x0a);
        if (nl === -1) break;
        const msg = JSON.parse(buf.subarray(0, nl).toString()) as { execute: string; arguments?: Record<string, unknown> };
        buf = buf.subarray(nl + 1);
        const reply = (v: unknown): boolean => s.write(JSON.stringify(v) + '\n');
        switch (msg.execute) {
          case 'guest-sync-delimited':
            if (ignored++ < (opts.ignoreFirstSyncs ?? 0)) break;
            s.write(Buffer.from([0xff]));
            reply({ return: msg.arguments?.id });
            break;
          case 'guest-exec':
            reply({ return: { pid: (msg.arguments?.path as string) === 'huge' ? 7 : 42 } });
            break;
          case 'guest-exec-status':
            if (msg.arguments?.pid === 7) {
              await streamHugeStatus(s, opts.hugeOutBytes ?? 50e6);
              break;
            }
            statusCalls++;
            reply({
              return:
                statusCalls < 3
                  ? { exited: false }
                  : {
                      exited: true,
                      exitcode: 3,
                      'out-data': Buffer.from('hello\n').toString('base64'),
                      'err-data': Buffer.from('oops').toString('base64'),
                    },
            });
            break;
          case 'guest-hang':
            break;
          default:
            reply({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } });
        }
      }
    };
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return {
    sock,
    stop: async () => {
      server.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A guest-exec-status reply whose out-data is `bytes` of base64, as qemu-ga sends it: one JSON
 * line. Written from one reused buffer with backpressure, so only the client's memory can grow.
 */
async function streamHugeStatus(s: net.Socket, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(1 << 20, 'A');
  const write = (b: Buffer): Promise<void> =>
    s.write(b)
      ? Promise.resolve()
      : new Promise<void>((r) => {
          const done = (): void => {
            s.off('drain', done).off('close', done);
            r();
          };
          s.on('drain', done).on('close', done);
        });
  await write(Buffer.from('{"return": {"exitcode": 0, "exited": true, "out-data": "'));
  for (let left = bytes; left > 0 && !s.destroyed; left -= chunk.length)
    await write(left >= chunk.length ? chunk : chunk.subarray(0, left));
  await write(Buffer.from('"}}\n'));
}

const rssMiB = (): number => Math.round(process.memoryUsage().rss / 2 ** 20);

describe('guest agent client against a fake qemu-ga', () => {
  let agent: Awaited<ReturnType<typeof fakeAgent>>;
  before(async () => {
    agent = await fakeAgent({ staleBeforeSync: '{"return": {"pid": 999}}\n{"return": 1}\n', ignoreFirstSyncs: 2 });
  });
  after(() => agent.stop());

  it('syncs past stale replies and unanswered attempts, then runs a command to completion', async () => {
    const c = await GuestAgentClient.connect(agent.sock);
    await c.sync(5000, 50);
    const out = await c.exec(['/bin/sh', '-c', 'echo hello; exit 3'], { timeoutMs: 5000 });
    assert.deepEqual(out, { exitCode: 3, stdout: 'hello\n', stderr: 'oops' });
    await assert.rejects(c.execute('guest-nope'), (e: unknown) => e instanceof GuestAgentError && e.errorClass === 'CommandNotFound');
    c.close();
  });

  it('times out a command that gets no answer, and resyncs before the next one', async () => {
    const c = await GuestAgentClient.connect(agent.sock);
    await c.sync(5000, 50);
    await assert.rejects(c.execute('guest-hang', undefined, 100), DeadlineError);
    const out = await c.exec(['true'], { timeoutMs: 5000 });
    assert.equal(out.exitCode, 3);
    c.close();
  });

  it('gives up a sync at its deadline when nothing answers', async () => {
    const mute = await fakeAgent({ ignoreFirstSyncs: 1_000_000 });
    const c = await GuestAgentClient.connect(mute.sock);
    await assert.rejects(c.sync(200, 50), DeadlineError);
    c.close();
    await mute.stop();
  });

  it('fails an exec whose output reply is too large with a typed error naming the limit, keeps memory flat, and stays usable', async (t) => {
    const big = await fakeAgent({ hugeOutBytes: 50e6 });
    const c = await GuestAgentClient.connect(big.sock);
    try {
      await c.sync(5000, 50);
      const before = rssMiB();
      const peaks: number[] = [];
      for (let i = 0; i < 3; i++) {
        await assert.rejects(c.exec(['huge'], { timeoutMs: 20_000 }), (e: unknown) => {
          assert.ok(e instanceof ForkyError, `a ForkyError, got ${String(e)}`);
          assert.equal(e.code, 'CAPACITY');
          assert.match(e.message, /exceeds 2097152 bytes/);
          return true;
        });
        peaks.push(rssMiB());
        // The connection is in step again: a small command right after works.
        assert.deepEqual(await c.exec(['/bin/sh', '-c', 'echo hello; exit 3'], { timeoutMs: 5000 }), {
          exitCode: 3,
          stdout: 'hello\n',
          stderr: 'oops',
        });
      }
      const growth = Math.max(...peaks) - before;
      t.diagnostic(
        `client RSS over three 50 MB exec replies: before ${before} MiB, after each ${peaks.join(', ')} MiB (growth ${growth} MiB)`,
      );
      assert.ok(growth < 32, `RSS grew by ${growth} MiB over three 50 MB replies: the line was buffered`);
    } finally {
      c.close();
      await big.stop();
    }
  });

  it('fails an exec whose decoded output exceeds maxOutputBytes, naming that limit', async () => {
    const small = await fakeAgent({});
    const c = await GuestAgentClient.connect(small.sock);
    try {
      const exec = c.exec as (cmd: string[], opts: Record<string, unknown>) => Promise<unknown>;
      await assert.rejects(
        exec.call(c, ['sh'], { timeoutMs: 5000, maxOutputBytes: 8 }),
        (e: unknown) => e instanceof ForkyError && e.code === 'CAPACITY' && /exceeds 8 bytes/.test(e.message),
      );
    } finally {
      c.close();
      await small.stop();
    }
  });
});

describe('bounded line splitter', () => {
  it('drops a line over its bound as it streams in, yields its size at the newline, and goes on', () => {
    const sp = new BoundedLineSplitter(8);
    const text = (l: Buffer | OverlongLine): string => (l instanceof OverlongLine ? `<${l.bytes}>` : l.toString());
    const out = [
      sp.push(Buffer.from('ab\n0123')),
      sp.push(Buffer.from('4567')),
      sp.push(Buffer.from('89'.repeat(50))),
      sp.push(Buffer.from('\n \r\n12345678\ncd')),
    ]
      .flat()
      .map(text);
    assert.deepEqual(out, ['ab', '<108>', '12345678']);
    assert.deepEqual(sp.push(Buffer.from('e\n')).map(text), ['cde'], 'a line split across chunks is joined');
    // Kept bytes are copies: a reused read buffer may be overwritten after push.
    const reused = Buffer.from('xyz');
    sp.push(reused);
    reused.fill(0x21);
    assert.deepEqual(sp.push(Buffer.from('\n')).map(text), ['xyz']);
  });
});
