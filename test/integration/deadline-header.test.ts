import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { z } from 'zod';
import { request, startService, type EndpointDef } from '@forky/bus';
import { decodeBody, encodeBody } from '@forky/contract';
import { startNatsServer, type NatsServer } from '@forky/bus';
import { testLogger } from '../helpers/hostd.js';
import { refused } from '../helpers/errors.js';

/**
 * A service refuses a request whose caller has given up (its Forky-Deadline, or the
 * Forky-Start-By a scheduler gives its host calls, has passed) without calling the handler, and
 * a request it serves hands its deadline on to the requests its handler makes.
 */
describe('request deadlines: a service does not start what its caller gave up on', { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let svc: Service;
  const calls: string[] = [];
  /** The headers the inner endpoint saw, per call. */
  const seen: Array<{ deadline: string | undefined; startBy: string | undefined }> = [];

  before(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    const Body = z.strictObject({ tag: z.string() });
    const endpoints: EndpointDef[] = [
      {
        name: 'work',
        subject: 'test.deadline.work',
        request: Body,
        reply: Body,
        handler: async (req) => {
          calls.push((req as { tag: string }).tag);
          return req;
        },
      },
      {
        // Calls `inner` with no deadline of its own: it must get this request's.
        name: 'outer',
        subject: 'test.deadline.outer',
        request: Body,
        reply: Body,
        handler: async (req) => {
          calls.push(`outer:${(req as { tag: string }).tag}`);
          await request(nc, 'test.deadline.inner', req, { timeoutMs: 120_000 });
          return req;
        },
      },
      {
        name: 'inner',
        subject: 'test.deadline.inner',
        request: Body,
        reply: Body,
        handler: async (req) => req,
      },
    ];
    svc = await startService(nc, { name: 'deadline-test', version: '0.0.1', description: 'deadline test' }, endpoints, testLogger());
    // Headers of the inner call, seen on the wire.
    nc.subscribe('test.deadline.inner', {
      callback: (_e, m) =>
        void seen.push({ deadline: m.headers?.get('Forky-Deadline') || undefined, startBy: m.headers?.get('Forky-Start-By') || undefined }),
    });
    await nc.flush();
  });
  after(async () => {
    await svc?.stop();
    await nc?.close();
    await nats?.stop();
  });

  /** A raw request with the given headers; the decoded reply and whether it is an error. */
  const raw = async (
    subject: string,
    tag: string,
    h: Record<string, string>,
  ): Promise<{ error?: { code: string; message: string }; tag?: string }> => {
    const hdrs = headers();
    hdrs.set('Content-Type', 'application/json');
    for (const [k, v] of Object.entries(h)) hdrs.set(k, v);
    const m = await nc.request(subject, encodeBody({ tag }, 'json'), { timeout: 5_000, headers: hdrs });
    return decodeBody(m.data, m.headers?.get('Content-Type') || undefined).value as { error?: { code: string; message: string } };
  };

  it('refuses a request past its Forky-Deadline with TIMEOUT, and does not call the handler', async (t) => {
    const past = Date.now() - 2_000;
    const r = await raw('test.deadline.work', 'late', { 'Forky-Deadline': String(past) });
    assert.equal(r.error?.code, 'TIMEOUT', JSON.stringify(r));
    assert.match(r.error?.message ?? '', /gave up at/);
    assert.ok(r.error?.message.includes(new Date(past).toISOString()), r.error?.message);
    assert.deepEqual(
      calls.filter((c) => c === 'late'),
      [],
      'the handler was not called',
    );
    t.diagnostic(`refused: ${r.error?.code}: ${r.error?.message}`);
  });

  it('refuses a request past its Forky-Start-By, though its deadline is far off', async () => {
    const r = await raw('test.deadline.work', 'unstarted', {
      'Forky-Deadline': String(Date.now() + 60_000),
      'Forky-Start-By': String(Date.now() - 1_000),
    });
    assert.equal(r.error?.code, 'TIMEOUT', JSON.stringify(r));
    assert.match(r.error?.message ?? '', /start/);
    assert.deepEqual(
      calls.filter((c) => c === 'unstarted'),
      [],
    );
  });

  it('refuses a malformed deadline header as BAD_REQUEST, without calling the handler', async () => {
    const r = await raw('test.deadline.work', 'garbled', { 'Forky-Deadline': 'tomorrow' });
    assert.equal(r.error?.code, 'BAD_REQUEST', JSON.stringify(r));
    assert.deepEqual(
      calls.filter((c) => c === 'garbled'),
      [],
    );
  });

  it('serves a request in time, and one without the header (the service applies its default)', async () => {
    assert.equal((await raw('test.deadline.work', 'in-time', { 'Forky-Deadline': String(Date.now() + 30_000) })).tag, 'in-time');
    assert.equal((await raw('test.deadline.work', 'no-header', {})).tag, 'no-header');
    assert.deepEqual(
      calls.filter((c) => c === 'in-time' || c === 'no-header'),
      ['in-time', 'no-header'],
    );
  });

  it("request() sends its deadline, and a handler's own requests inherit the deadline of the request it serves", async () => {
    const sentAt = Date.now();
    await request(nc, 'test.deadline.outer', { tag: 'nested' }, { timeoutMs: 7_000 });
    const inner = seen.at(-1);
    const deadline = Number(inner?.deadline);
    assert.ok(Number.isInteger(deadline), `the inner call carried a deadline: ${JSON.stringify(inner)}`);
    // The inner call asked for 120 s; the outer caller waits 7 s, so the inner one must not outlive that.
    assert.ok(
      deadline <= sentAt + 7_000 + 50 && deadline >= sentAt + 6_000,
      `inner deadline ${deadline - sentAt} ms after the outer call was sent`,
    );
  });

  it("request() refuses to send once the caller's deadline has passed", async () => {
    const e = await refused(request(nc, 'test.deadline.work', { tag: 'never-sent' }, { deadline: Date.now() - 1 }));
    assert.equal(e.code, 'TIMEOUT');
    assert.deepEqual(
      calls.filter((c) => c === 'never-sent'),
      [],
    );
  });
});
