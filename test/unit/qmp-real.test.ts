import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { withDeadline } from '@forky/base';
import { QmpClient, QmpClosedError, QmpCommandError } from '@forky/qemu';

describe('QMP client against real QEMU (-machine none)', () => {
  let dir: string;
  let qemu: ChildProcess;
  let client: QmpClient;
  let exited: Promise<void>;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qmpreal-'));
    const sock = path.join(dir, 'qmp.sock');
    const server = net.createServer();
    const conn = new Promise<net.Socket>((r) => server.once('connection', r));
    await new Promise<void>((r) => server.listen(sock, r));
    qemu = spawn(
      'qemu-system-x86_64',
      [
        '-machine',
        'none',
        '-nodefaults',
        '-display',
        'none',
        '-S',
        '-chardev',
        `socket,id=m,path=${sock},server=off`,
        '-mon',
        'chardev=m,mode=control',
      ],
      { stdio: 'ignore' },
    );
    exited = new Promise((r) => qemu.once('exit', () => r()));
    client = await QmpClient.handshake(await withDeadline(conn, 10_000, 'QEMU dial'));
    server.close();
  });

  after(async () => {
    qemu.kill('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('reads the version and runs commands', async () => {
    assert.equal(client.version.qemu.major >= 7, true);
    const st = await client.execute<{ status: string }>('query-status');
    assert.equal(st.status, 'prelaunch');
  });

  it('reports a QMP error class for an unknown command', async () => {
    await assert.rejects(
      client.execute('no-such-command'),
      (e: unknown) => e instanceof QmpCommandError && e.errorClass === 'CommandNotFound',
    );
  });

  it('sees events (STOP/RESUME) and rejects pending work when QEMU quits', async () => {
    const resumed = client.waitForEvent('RESUME', () => true, 5000);
    await client.execute('cont');
    await resumed;
    const stopped = client.waitForEvent('STOP', () => true, 5000);
    await client.execute('stop');
    await stopped;
    const never = client.waitForEvent('NEVER', () => true, 10_000);
    await client.execute('quit').catch(() => undefined);
    await assert.rejects(never, QmpClosedError);
    await withDeadline(exited, 5000, 'QEMU exit');
  });
});
