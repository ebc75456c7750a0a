import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { pollUntil } from '@forky/base';
import { newClusterAuth, startNatsServer, writeCredentials, type ClusterAuth, type NatsServer } from '@forky/bus';
import { gatewaySubject, type VmInfo } from '@forky/contract';
import { loadGatewayConfig, previewToken, secretFileOf, startGateway, type RunningGateway } from '@forky/gateway';
import { cliRunner } from '../helpers/cli-run.js';
import { guestShell } from '../helpers/guest.js';
import { startTestHost, testLogger, type TestHost } from '../helpers/hostd.js';
import { getHost, rawExchange, startDetached, startGuestWeb } from '../helpers/port-fixture.js';
import { ensureImage } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

const MIB = 10;
const HOST = 'gw-a';
/** 9002 marks that the guest saw a connection; 9003 answers two requests on one connection (keep-alive). */
const GUEST_SCRIPTS = `cat > /tmp/mark.sh <<'EOF'
#!/bin/sh
touch /tmp/seen
echo seen
EOF
cat > /tmp/two.sh <<'EOF'
#!/bin/sh
cr=$(printf '\\r')
for i in 1 2; do
  while IFS= read -r l; do [ -z "$l" ] || [ "$l" = "$cr" ] && break; done
  printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nr%s' "$i"
done
EOF
chmod +x /tmp/mark.sh /tmp/two.sh`;

/**
 * forky-gateway (issue 18, point 4) end to end: a nats-server with the cluster's users (the gateway
 * as its own restricted user), a hostd with QEMU VMs, a scheduler and the gateway; busybox httpd and
 * nc in the guest; node's http client and raw sockets on this side, with a Host header as a browser sends.
 */
describe('forky-gateway: HTTP and raw Upgrade tunnels to guest ports (real QEMU)', { timeout: 900_000 }, () => {
  let nats: NatsServer;
  let auth: ClusterAuth;
  let host: TestHost;
  let sched: TestScheduler;
  let gw: RunningGateway;
  let op: NatsConnection;
  let dir: string;
  let secret: Buffer;
  const vms: VmInfo[] = [];
  let sum = '';
  const sh = guestShell((id, cmd) => sched.client.call('vm.exec', { id, cmd }));
  const { forky } = cliRunner(() => dir);
  const vmA = (): string => (vms[0] as VmInfo).id;
  const vmB = (): string => (vms[1] as VmInfo).id;
  const gport = (): number => gw.address.port;
  const at = (vm: string, port: number): string => `${vm}-${port}.localhost:${gport()}`;
  const token = (vm: string): string => previewToken(secret, vm);
  const head = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
  const statusOf = (b: Buffer): number => Number(/^HTTP\/1\.1 (\d{3}) /.exec(b.toString('latin1'))?.[1]);

  before(async () => {
    await ensureImage();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-gw-'));
    auth = newClusterAuth([HOST]);
    nats = await startNatsServer({ auth });
    const opCreds = { user: auth.operator.user, pass: auth.operator.pass };
    op = await connect({ servers: nats.url, ...opCreds });
    host = await startTestHost(nats.url, {
      hostId: HOST,
      overrides: { nats: { servers: [nats.url], ...auth.hosts[HOST] } },
      clientOptions: opCreds,
    });
    sched = await startTestScheduler(nats.url, { nats: { ...auth.scheduler }, clientOptions: opCreds });
    const gwCreds = auth.gateway as { user: string; pass: string };
    gw = await startGateway(
      loadGatewayConfig({
        nats: { servers: [nats.url], ...gwCreds },
        listen: '127.0.0.1:0',
        dataDir: path.join(dir, 'gw'),
        logLevel: 'warn',
      }),
      testLogger(),
    );
    const secretFile = secretFileOf(loadGatewayConfig({ dataDir: path.join(dir, 'gw') }));
    assert.equal((await fs.stat(secretFile)).mode & 0o777, 0o600, 'the secret is its owner’s only');
    secret = await fs.readFile(secretFile);
    for (let i = 0; i < 2; i++) vms.push(await sched.client.call('vm.boot', { host: HOST, memMiB: 256 }));
    sum = await startGuestWeb(sched.nc, sh, vmA(), 8080, MIB);
    // 9002 marks the guest saw a connection; 9003 answers two requests on one connection (keep-alive).
    await sh(vmA(), GUEST_SCRIPTS);
    await startDetached(sched.nc, vmA(), 'exec nc -l -p 9002 -e /tmp/mark.sh');
    await startDetached(sched.nc, vmA(), 'exec nc -l -p 9003 -e /tmp/two.sh');
    const opFile = path.join(dir, 'operator.json');
    await writeCredentials(opFile, auth.operator);
    process.env.FORKY_NATS_AUTH_FILE = opFile;
    // httpd is up once a GET through the gateway answers 200.
    await pollUntil(
      async () =>
        (await getHost(gport(), at(vmA(), 8080), '/small', { headers: { 'X-Forky-Token': token(vmA()) } })).status === 200
          ? true
          : undefined,
      { timeoutMs: 30_000, what: 'httpd serving through the gateway' },
    );
  });

  after(async () => {
    delete process.env.FORKY_NATS_AUTH_FILE;
    await gw?.stop();
    await sched?.stop();
    await host?.stop();
    await op?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('no token: 401, and the guest saw nothing; with it, the same port is reached', async () => {
    const ask = (extra: string[]): Promise<Buffer> => rawExchange(gport(), head(['GET / HTTP/1.1', `Host: ${at(vmA(), 9002)}`, ...extra]));
    assert.equal(statusOf(await ask([])), 401);
    assert.equal(statusOf(await ask(['X-Forky-Token: ' + 'A'.repeat(43)])), 401);
    assert.equal(statusOf(await ask([`Cookie: forky_token=${token(vmB())}`])), 401, "another VM's token");
    assert.equal((await sh(vmA(), 'ls /tmp/seen 2>&1 || true')).includes('No such file'), true, 'no connection reached the guest');
    const got = await ask([`X-Forky-Token: ${token(vmA())}`]);
    assert.equal(got.toString().trim(), 'seen', 'the guest answered, raw');
    assert.equal((await sh(vmA(), 'ls /tmp/seen')).trim(), '/tmp/seen');
  });

  it('?forky_token= answers 302 to the URL without it, with an HttpOnly cookie; nothing goes to the guest', async () => {
    const r = await getHost(gport(), at(vmA(), 8080), `/small?a=1&forky_token=${token(vmA())}&b=2`);
    assert.equal(r.status, 302);
    assert.equal(r.headers.location, '/small?a=1&b=2');
    assert.deepEqual(r.headers['set-cookie'], [`forky_token=${token(vmA())}; HttpOnly; SameSite=Lax; Path=/`]);
    const bad = await getHost(gport(), at(vmA(), 8080), `/small?forky_token=${token(vmB())}`);
    assert.equal(bad.status, 401);
  });

  it('with the cookie: 200, a 10 MiB body intact; two requests on one kept-alive connection', async () => {
    const cookie = { Cookie: `other=1; forky_token=${token(vmA())}` };
    const big = await getHost(gport(), at(vmA(), 8080), '/big', { headers: cookie });
    assert.equal(big.status, 200);
    assert.equal(big.bytes, MIB << 20);
    assert.equal(big.sha256, sum, 'the body is the guest file, byte for byte');
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await getHost(gport(), at(vmA(), 9003), '/1', { headers: cookie, agent });
      const second = await getHost(gport(), at(vmA(), 9003), '/2', { headers: cookie, agent });
      assert.deepEqual([first.status, first.body, first.reused], [200, 'r1', false]);
      assert.deepEqual([second.status, second.body, second.reused], [200, 'r2', true], 'the second request went on the same connection');
    } finally {
      agent.destroy();
    }
  });

  it('an Upgrade request to a guest echo is a raw tunnel: every byte back, both ways', async () => {
    await startDetached(sched.nc, vmA(), 'exec nc -l -p 9001 -e cat');
    const upgrade = head([
      'GET /ws HTTP/1.1',
      `Host: ${at(vmA(), 9001)}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      'Sec-WebSocket-Version: 13',
      `X-Forky-Token: ${token(vmA())}`,
    ]);
    const frames = randomBytes(300_000);
    const sent = Buffer.concat([upgrade, frames]);
    const back = await pollUntil(
      async () => {
        const b = await rawExchange(gport(), sent, sent.length).catch(() => Buffer.alloc(0));
        return b.length === sent.length ? b : undefined;
      },
      { timeoutMs: 30_000, what: 'nc echoing in the guest' },
    );
    assert.equal(Buffer.compare(back, sent), 0, 'the head and the frames came back byte for byte');
  });

  it('bad heads get 400, 431, 401 or 404, and the gateway keeps serving', async () => {
    const ex = (b: Buffer | string): Promise<number> => rawExchange(gport(), Buffer.from(b)).then(statusOf);
    assert.equal(await ex(head(['GET / HTTP/1.1', `X-Forky-Token: ${token(vmA())}`])), 400, 'no Host');
    assert.equal(await ex(head(['GET / HTTP/1.1', 'Host: example.com', `X-Forky-Token: ${token(vmA())}`])), 400, 'a Host not ours');
    assert.equal(await ex(head(['GET / HTTP/1.1', `Host: ${at(vmA(), 8080)}`, `Host: ${at(vmB(), 8080)}`])), 400, 'two Hosts');
    assert.equal(await ex(head(['GET / HTTP/1.1', `Host: ${at(vmA(), 8080)}`, `X-Big: ${'x'.repeat(20 * 1024)}`])), 431);
    assert.equal(
      await ex(
        randomBytes(2000)
          .toString('latin1')
          .replace(/\r\n\r\n/g, '') + '\r\n\r\n',
      ),
      400,
      'garbage',
    );
    assert.equal(await ex(head(['GET / HTTP/1.1', ' folded: header', `Host: ${at(vmA(), 8080)}`])), 400, 'a folded line');
    const ghost = 'vm-000000000000';
    assert.equal(await ex(head(['GET / HTTP/1.1', `Host: ${at(ghost, 8080)}`, `X-Forky-Token: ${'B'.repeat(43)}`])), 401);
    assert.equal(await ex(head(['GET / HTTP/1.1', `Host: ${at(ghost, 8080)}`, `X-Forky-Token: ${token(ghost)}`])), 404);
    const refused = await rawExchange(gport(), head(['GET / HTTP/1.1', `Host: ${at(vmA(), 9999)}`, `X-Forky-Token: ${token(vmA())}`]));
    assert.match(refused.toString(), /^HTTP\/1\.1 502 [^]*port 9999: ECONNREFUSED/, 'a closed guest port: 502');
    const ok = await getHost(gport(), at(vmA(), 8080), '/small', { headers: { 'X-Forky-Token': token(vmA()) } });
    assert.deepEqual([ok.status, ok.body], [200, 'small\n']);
  });

  it('bounded: a head that never ends gets 408 in time; connections beyond the limit are dropped', async () => {
    const small = await startGateway(
      loadGatewayConfig({
        nats: { servers: [nats.url], ...(auth.gateway as { user: string; pass: string }) },
        listen: '127.0.0.1:0',
        dataDir: path.join(dir, 'gw'),
        headTimeoutMs: 1_500,
        maxConnections: 3,
        logLevel: 'warn',
      }),
      testLogger(),
    );
    try {
      const p = small.address.port;
      const t0 = Date.now();
      const idle = [0, 1, 2].map(() => rawExchange(p, Buffer.from('GET / HTTP/1.1\r\n')));
      await pollUntil(async () => (small.server.connections === 3 ? true : undefined), { timeoutMs: 5_000, what: 'three connections' });
      const beyond = await rawExchange(p, head(['GET / HTTP/1.1', `Host: ${at(vmA(), 8080)}`]));
      assert.equal(beyond.length, 0, 'the fourth connection is closed unanswered');
      for (const r of await Promise.all(idle)) assert.equal(statusOf(r), 408);
      assert.ok(Date.now() - t0 < 10_000, 'the head deadline held');
      const ok = await getHost(p, `${vmA()}-8080.localhost:${p}`, '/small', { headers: { 'X-Forky-Token': token(vmA()) } });
      assert.equal(ok.status, 200, 'the same secret: the token works on every gateway of the data dir');
    } finally {
      await small.stop();
    }
  });

  it('gateway.url over NATS (JSON, as the nats CLI sends it) and `forky preview`; an unknown VM is NOT_FOUND', async () => {
    const info = await op.request(`$SRV.INFO.forky-gateway`, '', { timeout: 5000 });
    assert.ok(JSON.stringify(info.json()).includes(gatewaySubject('gateway.url')), 'the endpoint is discoverable');
    const r = await op.request(gatewaySubject('gateway.url'), JSON.stringify({ id: vmA(), port: 8080 }), { timeout: 10_000 });
    assert.deepEqual(r.json(), { url: `http://${vmA()}-8080.localhost:${gport()}/`, token: token(vmA()) });
    const missing = await op.request(gatewaySubject('gateway.url'), JSON.stringify({ id: 'vm-000000000000', port: 80 }), {
      timeout: 10_000,
    });
    assert.equal(missing.json<{ error: { code: string } }>().error.code, 'NOT_FOUND');
    assert.equal(missing.headers?.get('Nats-Service-Error-Code'), '404');
    const bad = await op.request(gatewaySubject('gateway.url'), JSON.stringify({ id: vmA(), port: 0, x: 1 }), { timeout: 10_000 });
    assert.equal(bad.json<{ error: { code: string } }>().error.code, 'BAD_REQUEST');

    const cli = await forky(['--server', nats.url, '--json', 'preview', vmA(), '8080']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.deepEqual(JSON.parse(cli.stdout), { url: `http://${vmA()}-8080.localhost:${gport()}/`, token: token(vmA()) });
    const human = await forky(['--server', nats.url, 'preview', vmA(), '8080']);
    assert.equal(human.stdout, `http://${vmA()}-8080.localhost:${gport()}/?forky_token=${token(vmA())}\n`);
    const none = await forky(['--server', nats.url, 'preview', 'vm-000000000000', '8080']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /NOT_FOUND/);
  });
});
