import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { headers } from '@nats-io/nats-core';
import { pack, unpack } from 'msgpackr';
import { subjects, type HostdEndpoint, type VmInfo } from '@forky/contract';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { fileTree as tree } from '../helpers/files.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

describe('bad requests get a typed error and change nothing', { timeout: 300_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let vm: VmInfo;

  /** A raw request, as the `nats` CLI would send it. */
  const raw = async (endpoint: HostdEndpoint, body: Uint8Array, contentType?: string) => {
    const h = headers();
    if (contentType) h.set('Content-Type', contentType);
    const msg = await host.nc.request(subjects.host(host.hostId, endpoint), body, {
      timeout: 30_000,
      ...(contentType ? { headers: h } : {}),
    });
    return {
      status: msg.headers?.get('Nats-Service-Error-Code') || undefined,
      desc: msg.headers?.get('Nats-Service-Error') || undefined,
      body: msg.data,
    };
  };
  const json = async (endpoint: HostdEndpoint, body: unknown) => {
    const r = await raw(endpoint, enc.encode(JSON.stringify(body)));
    return { ...r, reply: JSON.parse(dec.decode(r.body)) as { error?: { code: string; message: string; details?: { field?: string } } } };
  };
  const expectError = async (endpoint: HostdEndpoint, body: unknown, code: string, status: string, messagePart: RegExp, field?: string) => {
    const r = await json(endpoint, body);
    assert.equal(r.status, status, `${endpoint} ${JSON.stringify(body)} -> status`);
    assert.equal(r.reply.error?.code, code);
    assert.match(r.reply.error?.message ?? '', messagePart);
    if (field) assert.equal(r.reply.error?.details?.field, field);
    assert.doesNotMatch(dec.decode(r.body), /at .*\.js|node:internal/, 'no stack on the wire');
  };

  before(async () => {
    await ensureImageOnce();
    nats = await startNatsServer();
    host = await startTestHost(nats.url);
    vm = await host.client.call('vm.boot', {});
  });

  after(async () => {
    await host?.stop();
    await nats?.stop();
  });

  it('answers JSON to JSON and msgpack to msgpack', async () => {
    const r = await json('vm.show', { id: vm.id });
    assert.equal(r.status, undefined);
    assert.equal((r.reply as unknown as VmInfo).id, vm.id);
    const m = await raw('vm.show', pack({ id: vm.id }));
    assert.throws(() => JSON.parse(dec.decode(m.body)), 'the msgpack reply is not JSON');
    assert.equal((unpack(m.body) as VmInfo).id, vm.id);
  });

  it('refuses malformed and hostile requests with a typed error naming the problem', async () => {
    const before = {
      vms: await host.client.call('vm.list', {}),
      snaps: await host.client.call('snapshot.list', {}),
      files: await tree(host.dataDir),
      ram: await tree(host.ramDir),
    };

    // Neither msgpack nor JSON.
    const notMsgpack = await raw('vm.boot', Uint8Array.from([0xc1, 0xc1, 0xc1]));
    assert.equal(notMsgpack.status, '400');
    assert.match(notMsgpack.desc ?? '', /BAD_REQUEST: body is neither JSON nor valid msgpack/);
    const truncatedJson = await raw('vm.boot', enc.encode('{"image": '));
    assert.equal(truncatedJson.status, '400');
    assert.match(truncatedJson.desc ?? '', /not valid JSON/);
    const truncatedMsgpack = await raw('vm.boot', pack({ image: 'tiny', memMiB: 256 }).subarray(0, 9));
    assert.equal(truncatedMsgpack.status, '400');

    await expectError('vm.show', {}, 'BAD_REQUEST', '400', /id/, 'id');
    await expectError('vm.show', { id: vm.id, extra: 1 }, 'BAD_REQUEST', '400', /extra/);
    await expectError('vm.boot', { image: 'tiny', memMiB: 256, gpu: true }, 'BAD_REQUEST', '400', /gpu/);
    await expectError('vm.show', { id: 'vm-aaaaaaaaaaaa' }, 'NOT_FOUND', '404', /vm-aaaaaaaaaaaa/);
    await expectError('vm.boot', { image: '../../etc' }, 'BAD_REQUEST', '400', /image/, 'image');
    await expectError('vm.boot', { image: 'nosuchimage' }, 'NOT_FOUND', '404', /nosuchimage/);
    await expectError('vm.boot', { memMiB: 'lots' }, 'BAD_REQUEST', '400', /memMiB/, 'memMiB');
    await expectError('vm.boot', { memMiB: 1e12 }, 'BAD_REQUEST', '400', /memMiB/, 'memMiB');
    await expectError('vm.boot', { ttlMs: 10 }, 'BAD_REQUEST', '400', /ttlMs/, 'ttlMs');
    await expectError('vm.boot', { idle: { afterMs: 5000, then: 'sleep' } }, 'BAD_REQUEST', '400', /idle/, 'idle.then');
    await expectError('vm.extend', { id: vm.id, ttlMs: 10 }, 'BAD_REQUEST', '400', /ttlMs/, 'ttlMs');
    await expectError('vm.extend', { id: 'vm-aaaaaaaaaaaa', ttlMs: 60_000 }, 'NOT_FOUND', '404', /vm-aaaaaaaaaaaa/);
    await expectError('fork', { source: vm.id, count: 0 }, 'BAD_REQUEST', '400', /count/, 'count');
    await expectError('fork', { source: vm.id, count: 10_000 }, 'BAD_REQUEST', '400', /count/, 'count');
    await expectError('fork', { source: '../../etc/passwd', count: 1 }, 'BAD_REQUEST', '400', /source/, 'source');
    await expectError('fork', { source: 'snap-aaaaaaaaaaaa', count: 1 }, 'NOT_FOUND', '404', /snap-aaaaaaaaaaaa/);
    await expectError('vm.exec', { id: 'vm-../../../x', cmd: ['ls'] }, 'BAD_REQUEST', '400', /id/, 'id');
    await expectError('vm.exec', { id: vm.id, cmd: [] }, 'BAD_REQUEST', '400', /cmd/, 'cmd');
    await expectError('snapshot.delete', { id: 'snap-aaaaaaaaaaaa' }, 'NOT_FOUND', '404', /snap-aaaaaaaaaaaa/);
    await expectError('vm.resume', { id: vm.id }, 'INVALID_STATE', '409', /cannot resume .* running/);

    assert.deepEqual(await host.client.call('vm.list', {}), before.vms);
    assert.deepEqual(await host.client.call('snapshot.list', {}), before.snaps);
    assert.deepEqual(await tree(host.dataDir), before.files, 'no file made or removed');
    assert.deepEqual(await tree(host.ramDir), before.ram);
    assert.equal((await host.client.call('vm.exec', { id: vm.id, cmd: ['true'] })).exitCode, 0, 'the VM still answers');
  });

  it('is a discoverable micro service ($SRV.PING / INFO / STATS), as `nats micro` sees it', async () => {
    const ping = JSON.parse(dec.decode((await host.nc.request('$SRV.PING.forky-hostd', new Uint8Array(), { timeout: 5000 })).data)) as {
      name: string;
      metadata: Record<string, string>;
    };
    assert.equal(ping.name, 'forky-hostd');
    assert.equal(ping.metadata.host, host.hostId);
    const info = JSON.parse(dec.decode((await host.nc.request('$SRV.INFO.forky-hostd', new Uint8Array(), { timeout: 5000 })).data)) as {
      endpoints: Array<{ name: string; subject: string }>;
    };
    const fork = info.endpoints.find((e) => e.name === 'fork');
    assert.equal(fork?.subject, `forky.v1.host.${host.hostId}.fork`);
    assert.ok(
      info.endpoints.every((e) => e.subject.startsWith(`forky.v1.host.${host.hostId}.`)),
      'every endpoint is under the host prefix',
    );
    const stats = JSON.parse(dec.decode((await host.nc.request('$SRV.STATS.forky-hostd', new Uint8Array(), { timeout: 5000 })).data)) as {
      endpoints: Array<{ name: string; data: { requests: number; errors: number; lastError: string } }>;
    };
    const show = stats.endpoints.find((e) => e.name === 'vm_show');
    assert.ok((show?.data.requests ?? 0) > 0 && (show?.data.errors ?? 0) > 0, 'stats count requests and errors');
    assert.match(show?.data.lastError ?? '', /^[A-Z_]+: /);
  });
});
