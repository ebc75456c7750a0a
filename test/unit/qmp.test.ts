import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DeadlineError } from '@forky/base';
import { ProtocolError, QmpClient, QmpClosedError, QmpCommandError } from '@forky/qemu';
import { FakeQmpServer } from '../helpers/fake-qmp.js';

describe('QMP client against a fake QMP server', () => {
  let server: FakeQmpServer;
  let client: QmpClient | undefined;
  before(async () => {
    server = await FakeQmpServer.start();
  });
  afterEach(() => client?.close());
  after(() => server.stop());

  it('negotiates capabilities after the greeting and reads the version', async () => {
    client = await QmpClient.connect(server.path);
    assert.deepEqual(client.version.qemu, { major: 7, minor: 2, micro: 22 });
    assert.equal(server.received.at(-1)?.execute, 'qmp_capabilities');
  });

  it('puts a distinct id on every command and matches replies to them', async () => {
    server.on('query-status', { return: { status: 'running' } });
    client = await QmpClient.connect(server.path);
    const [a, b] = await Promise.all([client.execute('query-status'), client.execute('query-status')]);
    assert.deepEqual(a, { status: 'running' });
    assert.deepEqual(b, { status: 'running' });
    const ids = server.received.filter((m) => m.execute === 'query-status').map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(ids.every((id) => typeof id === 'string' && id.length > 0));
  });

  it('turns a QMP error into a typed error with the class and the command', async () => {
    server.on('blockdev-add', { error: { class: 'GenericError', desc: 'node name in use' } });
    client = await QmpClient.connect(server.path);
    await assert.rejects(client.execute('blockdev-add', { 'node-name': 'x' }), (e: unknown) => {
      assert.ok(e instanceof QmpCommandError);
      assert.equal(e.errorClass, 'GenericError');
      assert.equal(e.command, 'blockdev-add');
      assert.equal(e.code, 'QEMU');
      return true;
    });
  });

  it('gives every command a deadline', async () => {
    server.on('migrate', 'silent');
    client = await QmpClient.connect(server.path);
    await assert.rejects(client.execute('migrate', {}, { timeoutMs: 50 }), DeadlineError);
  });

  it('delivers events to waiters and to the event stream', async () => {
    client = await QmpClient.connect(server.path);
    const waited = client.waitForEvent('MIGRATION', (e) => e.data?.status === 'completed', 2000);
    const stream = client.events();
    server.emit('MIGRATION', { status: 'active' });
    server.emit('MIGRATION', { status: 'completed' });
    assert.equal((await waited).data?.status, 'completed');
    assert.equal((await stream.next()).value?.data?.status, 'active');
    assert.equal((await stream.next()).value?.data?.status, 'completed');
    await stream.return?.(undefined);
  });

  it('rejects every pending call when the socket closes, and later calls too', async () => {
    server.on('stop', 'silent');
    server.on('cont', 'hangup');
    client = await QmpClient.connect(server.path);
    const pending = client.execute('stop', undefined, { timeoutMs: 5000 });
    const event = client.waitForEvent('NEVER', () => true, 5000);
    await assert.rejects(client.execute('cont'), QmpClosedError);
    await assert.rejects(pending, QmpClosedError);
    await assert.rejects(event, QmpClosedError);
    await client.closed;
    assert.equal(client.isClosed, true);
    await assert.rejects(client.execute('query-status'), QmpClosedError);
  });

  it('treats a line that is not JSON as fatal', async () => {
    server.on('quit', 'garbage');
    server.on('query-status', 'silent');
    client = await QmpClient.connect(server.path);
    const other = client.execute('query-status', undefined, { timeoutMs: 5000 });
    await assert.rejects(client.execute('quit'), ProtocolError);
    await assert.rejects(other, ProtocolError);
    assert.equal(client.isClosed, true);
  });

  it('fails the handshake with a deadline if no greeting comes', async () => {
    const net = await import('node:net');
    const fs = await import('node:fs/promises');
    const p = `${server.path}.mute`;
    const mute = net.createServer(() => undefined);
    await new Promise<void>((r) => mute.listen(p, r));
    try {
      await assert.rejects(QmpClient.connect(p, { handshakeTimeoutMs: 100 }), DeadlineError);
    } finally {
      mute.close();
      await fs.rm(p, { force: true });
    }
  });
});
