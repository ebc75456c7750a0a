import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { z } from 'zod';
import { ForkyError } from '@forky/base';
import { request, startNatsServer, startService, type EndpointDef, type NatsServer } from '@forky/bus';
import { HEADER_MAX_BYTES } from '@forky/contract';
import { testLogger } from '../helpers/hostd.js';
import { RawNats, type RawReply } from '../helpers/raw-nats.js';

const Ok = z.strictObject({ ok: z.literal(true) });
const Any = z.strictObject({ text: z.string().optional() });

/** Endpoints that fail in every way a handler path can: each must end in a typed reply. */
const ENDPOINTS: EndpointDef[] = [
  { name: 'echo', subject: 'svc.echo', request: Any, reply: Ok, handler: () => Promise.resolve({ ok: true }) },
  {
    name: 'newline',
    subject: 'svc.newline',
    request: Any,
    reply: Ok,
    handler: () => Promise.reject(new ForkyError('NOT_FOUND', `no\r\nsuch\u0000thing \u2028${'x'.repeat(20_000)}`)),
  },
  // A value whose String() throws: nothing in the error path may assume a printable error.
  { name: 'odd', subject: 'svc.odd', request: Any, reply: Ok, handler: () => Promise.reject(Object.create(null) as object) },
  { name: 'bad_reply', subject: 'svc.bad-reply', request: Any, reply: Ok, handler: () => Promise.resolve({ ok: 'no', extra: 'a\nb' }) },
  // Larger than the server's max_payload: msg.respond itself throws.
  {
    name: 'huge',
    subject: 'svc.huge',
    request: Any,
    reply: z.strictObject({ blob: z.string() }),
    handler: () => Promise.resolve({ blob: 'x'.repeat(2 << 20) }),
  },
  {
    name: 'sync_throw',
    subject: 'svc.sync-throw',
    request: Any,
    reply: Ok,
    handler: () => {
      throw new Error('thrown before any promise\nsecond line');
    },
  },
];

/** The status line and headers of a raw reply, parsed. */
function parseHeaders(raw: RawReply): { status: string; headers: Map<string, string> } {
  const [status = '', ...lines] = raw.headers.split('\r\n');
  const headers = new Map<string, string>();
  for (const l of lines) if (l.includes(':')) headers.set(l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim());
  return { status, headers };
}

describe('a service answers every request with a typed reply, whatever its handler or the request does', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let svc: Service;
  let raw: RawNats;
  const rejections: unknown[] = [];
  const onRejection = (e: unknown): void => void rejections.push(e);

  before(async () => {
    process.on('unhandledRejection', onRejection);
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    svc = await startService(nc, { name: 'fault-svc', version: '0.0.1', description: 'faults' }, ENDPOINTS, testLogger());
    raw = await RawNats.connect(nats.port);
  });
  after(async () => {
    process.off('unhandledRejection', onRejection);
    raw?.close();
    await svc?.stop();
    await nc?.close();
    await nats?.stop();
  });

  it('a failing handler, a reply off the contract or too large to send: INTERNAL or its own code, one-line header', async (t) => {
    const cases: Array<[string, string]> = [
      ['svc.newline', 'NOT_FOUND'],
      ['svc.odd', 'INTERNAL'],
      ['svc.bad-reply', 'INTERNAL'],
      ['svc.huge', 'INTERNAL'],
      ['svc.sync-throw', 'INTERNAL'],
    ];
    for (const [subject, code] of cases) {
      const reply = await raw.request(subject, '{}', { timeoutMs: 5000 });
      assert.ok(reply, `${subject}: answered`);
      const { headers } = parseHeaders(reply);
      const desc = headers.get('Nats-Service-Error') ?? '';
      assert.ok(desc.startsWith(`${code}: `), `${subject}: header ${desc}`);
      assert.doesNotMatch(desc, /\p{Cc}/u);
      assert.ok(Buffer.byteLength(desc) <= HEADER_MAX_BYTES, `${subject}: header of ${Buffer.byteLength(desc)} bytes`);
      const body = JSON.parse(reply.data.toString()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, code);
      assert.doesNotMatch(body.error.message, /\n\s+at /, 'no stack on the wire');
      t.diagnostic(`${subject}: ${desc.slice(0, 100)}`);
    }
    // The typed client gets the same as a RemoteError.
    await assert.rejects(
      request(nc, 'svc.bad-reply', {}, { format: 'json', timeoutMs: 5000 }),
      (e: unknown) => e instanceof ForkyError && e.code === 'INTERNAL' && /reply does not match the contract: ok/.test(e.message),
    );
  });

  it('headers it cannot parse, garbage or odd content types, and odd reply subjects: BAD_REQUEST or an answer, never an exit', async () => {
    const bad = [
      'NATS/1.0\r\nBad Key: x\r\n\r\n',
      'NATS/1.0\r\nContent-Type: \u0001\u00ff garbage;;;json?\r\n\r\n',
      Buffer.concat([Buffer.from('NATS/1.0\r\nContent-Type: '), Buffer.from([0xff, 0xfe, 0x00]), Buffer.from('\r\n\r\n')]),
      'NATS/1.0\r\nContent-Type\r\n\r\n',
      `NATS/1.0\r\nContent-Type: application/json\r\nContent-Type: application/msgpack\r\nX: ${'y'.repeat(60_000)}\r\n\r\n`,
      'NATS/1.0 999 odd status\r\n\r\n',
    ];
    const unparsable = await raw.request('svc.echo', '{}', { headers: bad[0] as string, timeoutMs: 5000 });
    assert.equal(
      unparsable && parseHeaders(unparsable).headers.get('Nats-Service-Error-Code'),
      '400',
      "a header name with a space: the caller's fault",
    );
    assert.match(unparsable?.data.toString() ?? '', /BAD_REQUEST.*headers cannot be parsed/);
    for (const headers of bad) {
      const reply = await raw.request('svc.echo', '{"text":"a"}', { headers, timeoutMs: 5000 });
      assert.ok(reply, `answered with headers ${JSON.stringify(headers.toString()).slice(0, 60)}`);
      const code = parseHeaders(reply).headers.get('Nats-Service-Error-Code');
      // Either it was served (a header the client could read) or refused as the caller's fault.
      assert.ok(code === undefined || code === '400', `status ${code} for ${JSON.stringify(headers.toString()).slice(0, 60)}`);
    }
    // Reply subjects with bytes NATS carries but no client would make: the reply goes there.
    for (const suffix of [Buffer.from([0x01, 0x7f]), Buffer.from('.ü.\u0000')]) {
      const reply = await raw.request('svc.echo', '{}', { replySuffix: suffix, timeoutMs: 5000 });
      assert.deepEqual(JSON.parse(reply?.data.toString() ?? 'null'), { ok: true });
    }
    // One that is not UTF-8 cannot be answered (the client decodes it to U+FFFD and replies to
    // that): no reply comes, and nothing breaks (the next test asks again).
    assert.equal(await raw.request('svc.echo', '{}', { replySuffix: Buffer.from([0xff, 0xfe]), timeoutMs: 1000 }), undefined);
  });

  it("a reply the client cannot read is INTERNAL for its caller, not the caller's BAD_REQUEST", async () => {
    const sub = nc.subscribe('svc.garbage', { callback: (_err, msg) => void msg.respond(Uint8Array.from([0xc1, 0xff, 0x0a])) });
    try {
      await assert.rejects(
        request(nc, 'svc.garbage', {}, { timeoutMs: 5000 }),
        (e: unknown) => e instanceof ForkyError && e.code === 'INTERNAL' && /the reply cannot be read/.test(e.message),
      );
    } finally {
      sub.unsubscribe();
    }
  });

  it('still serves, and no rejection went unhandled', async () => {
    assert.deepEqual(await request(nc, 'svc.echo', {}, { timeoutMs: 5000 }), { ok: true });
    await raw.flush();
    assert.deepEqual(rejections, []);
  });
});
