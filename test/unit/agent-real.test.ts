import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pollUntil } from '@forky/base';
import { connectAgent, type AgentEnd, type AgentMsg, type GuestSession, type GuestStream } from '@forky/agent';
import { AgentHarness, agentBinary, agentSourcesPresent, AGENT_SRC } from '../helpers/agent-binary.js';
import { isRunning } from '../helpers/procs.js';

interface Collected {
  stdout: string;
  stderr: string;
  msgs: AgentMsg[];
  end: AgentEnd;
}

async function collect(stream: GuestStream): Promise<Collected> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const msgs: AgentMsg[] = [];
  let end: AgentEnd | undefined;
  for await (const ev of stream.events) {
    if (ev.kind === 'data') (ev.channel === 1 ? out : err).push(Buffer.from(ev.bytes));
    else if (ev.kind === 'msg') msgs.push(ev.msg);
    else if (ev.kind === 'end') end = ev.end;
  }
  return { stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), msgs, end: end! };
}

/** Pids whose process group is `pgid` (field 5 of /proc/PID/stat), zombies left out. */
async function groupMembers(pgid: number): Promise<number[]> {
  const pids: number[] = [];
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const stat = await fs.readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] !== 'Z' && Number(fields[2]) === pgid) pids.push(Number(e));
  }
  return pids;
}

const startedPid = (c: { msgs: AgentMsg[] }): number => {
  const m = c.msgs.find((x) => x.type === 'started');
  assert.ok(m && m.type === 'started', 'no started MSG');
  return m.pid;
};

describe('agent session against the real forky-agent', { timeout: 180_000 }, async () => {
  const present = await agentSourcesPresent();
  let harness: AgentHarness;
  let session: GuestSession;
  let dir: string;
  before(async () => {
    if (!present) return;
    harness = await AgentHarness.start(await agentBinary());
    session = await connectAgent(harness.hostSocket, { timeoutMs: 10_000 });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fagentfs-'));
  });
  after(async () => {
    session?.close();
    await harness?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });
  const test = (name: string, fn: () => Promise<void>): void => {
    it(name, async (t) => {
      if (!present) return t.skip(`images/tiny/agent not built: no sources at ${AGENT_SRC}`);
      await fn();
    });
  };

  test('exec streams stdout, and stdin reaches cat', async () => {
    const echo = await collect(session.open({ op: 'exec', cmd: ['echo', 'hello', 'world'] }));
    assert.equal(echo.stdout, 'hello world\n');
    assert.equal(echo.end.ok && echo.end.exitCode, 0);
    startedPid(echo);
    const cat = session.open({ op: 'exec', cmd: ['cat'], stdin: true });
    const done = collect(cat);
    await cat.write(Buffer.from('to cat\n'));
    cat.closeInput();
    const c = await done;
    assert.equal(c.stdout, 'to cat\n');
    assert.equal(c.end.ok && c.end.exitCode, 0);
  });

  test('children start with no signal ignored; a FIFO is refused, not opened', async () => {
    const st = await collect(session.open({ op: 'exec', cmd: ['grep', 'SigIgn', '/proc/self/status'] }));
    assert.equal(st.stdout, 'SigIgn:\t0000000000000000\n');
    const pty = await collect(session.open({ op: 'exec', cmd: ['grep', 'SigIgn', '/proc/self/status'], pty: { rows: 24, cols: 80 } }));
    assert.match(pty.stdout, /SigIgn:\t0000000000000000/);
    const fifo = path.join(dir, 'fifo');
    await promisify(execFile)('mkfifo', [fifo]);
    const rd = await collect(session.open({ op: 'read', path: fifo }));
    assert.equal(!rd.end.ok && rd.end.code, 'INVALID');
    const wr = session.open({ op: 'write', path: fifo, mode: 'truncate' });
    const w = await collect(wr);
    assert.equal(!w.end.ok && w.end.code, 'INVALID');
  });

  test('exit codes: 127 not found, 126 not executable, 124 timeout kills the whole group', async () => {
    const nf = await collect(session.open({ op: 'exec', cmd: ['forky-no-such-cmd'] }));
    assert.equal(nf.end.ok && nf.end.exitCode, 127);
    assert.match(nf.stderr, /forky-agent: forky-no-such-cmd: not found/);
    const file = path.join(dir, 'not-exec.sh');
    await fs.writeFile(file, '#!/bin/sh\necho hi\n', { mode: 0o644 });
    const ne = await collect(session.open({ op: 'exec', cmd: [file] }));
    assert.equal(ne.end.ok && ne.end.exitCode, 126);
    assert.match(ne.stderr, /permission denied/);
    const to = await collect(session.open({ op: 'exec', cmd: ['sh', '-c', 'sleep 100 & sleep 100'], timeoutMs: 300 }));
    assert.ok(to.end.ok);
    assert.equal(to.end.exitCode, 124);
    assert.equal(to.end.timedOut, true);
    const pgid = startedPid(to);
    await pollUntil(async () => ((await groupMembers(pgid)).length === 0 ? true : undefined), {
      timeoutMs: 3000,
      what: `group ${pgid} gone`,
    });
  });

  test('cancel kills an exec (137), a PTY has its size, a watch reports events until cancelled', async () => {
    const sleeper = session.open({ op: 'exec', cmd: ['sleep', '100'] });
    const done = collect(sleeper);
    await pollUntil(
      async () =>
        ((await session.call({ op: 'ps' }, 5000)).end as { processes?: { cmd: string[]; running: boolean }[] }).processes?.some(
          (p) => p.running && p.cmd.join(' ') === 'sleep 100',
        ) || undefined,
      { timeoutMs: 3000, what: 'sleep running' },
    );
    sleeper.cancel();
    sleeper.cancel();
    const c = await done;
    assert.ok(c.end.ok);
    assert.equal(c.end.exitCode, 137);
    assert.equal(c.end.cancelled, true);
    const pty = await collect(session.open({ op: 'exec', cmd: ['stty', 'size'], pty: { rows: 33, cols: 101 } }));
    assert.match(pty.stdout, /^33 101\r?\n$/);
    assert.equal(pty.end.ok && pty.end.exitCode, 0);
    const wdir = path.join(dir, 'watched');
    await fs.mkdir(wdir);
    const w = session.open({ op: 'watch', path: wdir });
    const events = w.events[Symbol.asyncIterator]();
    // Written until an event comes: the watch may start after the first write.
    let seen: AgentMsg | undefined;
    const t0 = Date.now();
    while (!seen && Date.now() - t0 < 5000) {
      await fs.writeFile(path.join(wdir, `f${Date.now()}`), 'x');
      const ev = await Promise.race([events.next(), new Promise<undefined>((r) => setTimeout(() => r(undefined), 200))]);
      if (ev && !ev.done && ev.value.kind === 'msg') seen = ev.value.msg;
    }
    assert.equal(seen?.type, 'events');
    w.cancel();
    const wEnd = await w.ended;
    assert.ok(wEnd.ok || wEnd.code === 'CANCELLED', JSON.stringify(wEnd));
  });

  test('a 20 MiB write then read round-trips through a small window', async () => {
    const data = randomBytes(20 << 20);
    const file = path.join(dir, 'sub', 'big.bin');
    const w = session.open({ op: 'write', path: file, mode: 'create', parents: true });
    const wDone = collect(w);
    for (let off = 0; off < data.length; off += 1 << 20) await w.write(data.subarray(off, off + (1 << 20)));
    w.closeInput();
    const wr = await wDone;
    assert.deepEqual(wr.end, { ok: true, bytes: data.length });
    const r = session.open({ op: 'read', path: file }, { window: 16 * 1024 });
    const hash = createHash('sha256');
    let n = 0;
    let end: AgentEnd | undefined;
    const msgs: AgentMsg[] = [];
    for await (const ev of r.events) {
      if (ev.kind === 'data') {
        hash.update(ev.bytes);
        n += ev.bytes.length;
      } else if (ev.kind === 'msg') msgs.push(ev.msg);
      else if (ev.kind === 'end') end = ev.end;
    }
    assert.equal(n, data.length);
    assert.equal(hash.digest('hex'), createHash('sha256').update(data).digest('hex'));
    assert.deepEqual(end, { ok: true, bytes: data.length });
    assert.equal(msgs[0]?.type === 'stat' && msgs[0].stat.size, data.length);
    // create fails on an existing file.
    const again = await collect(session.open({ op: 'write', path: file, mode: 'create' }));
    assert.equal(!again.end.ok && again.end.code, 'EXISTS');
  });

  test('detach, ps, attach, signal', async () => {
    const d = await session.call({ op: 'exec', cmd: ['sh', '-c', 'echo out; echo err >&2; exec sleep 100'], detach: true }, 5000);
    assert.ok(d.end.ok && d.end.pid);
    const pid = d.end.pid;
    const listed = async (): Promise<{ running: boolean; exitCode: number | null; detached: boolean } | undefined> => {
      const ps = await session.call({ op: 'ps' }, 5000);
      return ps.end.ok ? ps.end.processes?.find((p) => p.pid === pid) : undefined;
    };
    assert.deepEqual(await listed().then((p) => p && { running: p.running, detached: p.detached }), { running: true, detached: true });
    await pollUntil(
      async () => {
        const a = await collect(session.open({ op: 'attach', pid, follow: false }));
        return a.stdout === 'out\n' && a.stderr === 'err\n' ? a : undefined;
      },
      { timeoutMs: 3000, what: 'detached output buffered' },
    );
    const follow = collect(session.open({ op: 'attach', pid, follow: true }));
    assert.deepEqual((await session.call({ op: 'signal', pid, signal: 'TERM' }, 5000)).end, { ok: true });
    const f = await follow;
    assert.equal(f.end.ok && f.end.exitCode, 143);
    const p = await pollUntil(async () => ((await listed())?.running === false ? listed() : undefined), {
      timeoutMs: 3000,
      what: 'exited',
    });
    assert.equal(p?.exitCode, 143);
    const bad = await session.call({ op: 'signal', pid: 999_999, signal: 'KILL' }, 5000);
    assert.equal(bad.end.ok, false);
  });

  test('stat, list, mkdir, remove, rename', async () => {
    const base = path.join(dir, 'fs');
    assert.deepEqual((await session.call({ op: 'mkdir', path: path.join(base, 'a', 'b'), parents: true }, 5000)).end, { ok: true });
    await fs.writeFile(path.join(base, 'a', 'f.txt'), 'hello');
    const st = await session.call({ op: 'stat', path: path.join(base, 'a', 'f.txt') }, 5000);
    assert.ok(st.end.ok && st.end.stat);
    assert.equal(st.end.stat.type, 'file');
    assert.equal(st.end.stat.size, 5);
    const ls = await session.call({ op: 'list', path: path.join(base, 'a') }, 5000);
    assert.deepEqual(ls.end, { ok: true });
    const names = ls.msgs.flatMap((m) => (m.type === 'entries' ? m.entries.map((e) => `${e.name}:${e.stat.type}`) : [])).sort();
    assert.deepEqual(names, ['b:dir', 'f.txt:file']);
    const mv = await session.call({ op: 'rename', from: path.join(base, 'a', 'f.txt'), to: path.join(base, 'g.txt') }, 5000);
    assert.deepEqual(mv.end, { ok: true });
    assert.equal(await fs.readFile(path.join(base, 'g.txt'), 'utf8'), 'hello');
    const notEmpty = await session.call({ op: 'remove', path: path.join(base, 'a') }, 5000);
    assert.equal(!notEmpty.end.ok && notEmpty.end.code, 'NOT_EMPTY');
    assert.deepEqual((await session.call({ op: 'remove', path: path.join(base, 'a'), recursive: true }, 5000)).end, { ok: true });
    const gone = await session.call({ op: 'stat', path: path.join(base, 'a') }, 5000);
    assert.equal(!gone.end.ok && gone.end.code, 'NOT_FOUND');
  });

  test('a second session ends the streams of the first and keeps its processes, foreground ones as if detached', async () => {
    // PROTOCOL.md, Session start: a HELLO kills nothing (a snapshot or fork must not kill a build).
    const fg = session.open({ op: 'exec', cmd: ['sh', '-c', 'echo before; exec sleep 100'] });
    const fgEnded = fg.ended;
    // Pulled by hand: leaving a for-await early would cancel the stream.
    const events = fg.events[Symbol.asyncIterator]();
    let fgPid = 0;
    while (!fgPid) {
      const ev = await events.next();
      assert.ok(!ev.done);
      if (ev.value.kind === 'msg' && ev.value.msg.type === 'started') fgPid = ev.value.msg.pid;
    }
    const d = await session.call({ op: 'exec', cmd: ['sleep', '100'], detach: true }, 5000);
    assert.ok(d.end.ok && d.end.pid);
    const dPid = d.end.pid;
    session.close();
    const fgEnd = await fgEnded;
    assert.equal(!fgEnd.ok && fgEnd.code, 'GONE');
    session = await connectAgent(harness.hostSocket, { timeoutMs: 10_000 });
    await session.ping(2000);
    assert.equal(await isRunning(fgPid), true);
    assert.equal(await isRunning(dPid), true);
    const ps = await session.call({ op: 'ps' }, 5000);
    assert.ok(ps.end.ok);
    assert.ok(ps.end.processes?.some((p) => p.pid === fgPid && p.running));
    assert.ok(ps.end.processes?.some((p) => p.pid === dPid && p.running && p.detached));
    const replay = await collect(session.open({ op: 'attach', pid: fgPid, follow: false }));
    assert.equal(replay.stdout, 'before\n');
    for (const pid of [fgPid, dPid]) assert.deepEqual((await session.call({ op: 'signal', pid, signal: 'KILL' }, 5000)).end, { ok: true });
    await pollUntil(async () => (!(await isRunning(fgPid)) && !(await isRunning(dPid)) ? true : undefined), {
      timeoutMs: 3000,
      what: 'killed',
    });
  });

  test('an agent restarted in the guest: the stale session fails a probe, a new session works', async () => {
    await session.ping(2000);
    const stale = session;
    await harness.restart();
    // The chardev stays connected: the host's socket is open, and the new agent answers PINGs
    // before any HELLO, so a PING cannot tell; a request on the session can.
    await stale.ping(2000);
    assert.ok(stale.probe, 'sessions made by connectAgent have probe()');
    const t0 = Date.now();
    await assert.rejects(stale.probe(1000), (e: unknown) => {
      assert.equal((e as { code?: string }).code, 'UNAVAILABLE');
      assert.match((e as Error).message, /did not answer on this session within 1000 ms/);
      return true;
    });
    assert.ok(Date.now() - t0 < 3000);
    assert.ok(typeof stale.lastHeardMs === 'number' && stale.lastHeardMs <= Date.now());
    stale.close();
    session = await connectAgent(harness.hostSocket, { timeoutMs: 10_000 });
    await session.probe!(2000);
    const echo = await collect(session.open({ op: 'exec', cmd: ['echo', 'again'] }));
    assert.equal(echo.stdout, 'again\n');
    assert.notEqual(session.agent?.pid, stale.agent?.pid);
  });
});
