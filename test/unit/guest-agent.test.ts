import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DeadlineError } from '@forky/base';
import { GuestAgentClient, GuestAgentError } from '@forky/qemu';

/**
 * A fake guest agent of our own that behaves like qemu-ga on the wire: 0xFF resets its parser
 * (and earns a parse error reply), guest-sync-delimited answers after a 0xFF, no ids.
 */
async function fakeAgent(opts: { staleBeforeSync?: string; ignoreFirstSyncs?: number }) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fqga-'));
  const sock = path.join(dir, 'qga.sock');
  let statusCalls = 0;
  let ignored = 0;
  const server = net.createServer((s) => {
    if (opts.staleBeforeSync) s.write(opts.staleBeforeSync);
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
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
            reply({ return: { pid: 42 } });
            break;
          case 'guest-exec-status':
            statusCalls++;
            reply({ return: statusCalls < 3 ? { exited: false } : { exited: true, exitcode: 3, 'out-data': Buffer.from('hello\n').toString('base64'), 'err-data': Buffer.from('oops').toString('base64') } });
            break;
          case 'guest-hang':
            break;
          default:
            reply({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } });
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return { sock, stop: async () => { server.close(); await fs.rm(dir, { recursive: true, force: true }); } };
}

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
});
