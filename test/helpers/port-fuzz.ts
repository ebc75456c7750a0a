import assert from 'node:assert/strict';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { pollUntil, withDeadline } from '@forky/base';
import { HostdClient, openStream, type ClientStream } from '@forky/bus';
import { STREAM_HEADERS, subjects } from '@forky/contract';
import { hostileBodies, type Base } from './fuzz-bodies.js';
import type { TestHost } from './hostd.js';

export interface PortFuzzOptions {
  nc: NatsConnection;
  host: TestHost;
  vm: string;
  /** A guest port that serves HTTP (`/small` says `small`). */
  port: number;
  seed: number;
  /** Streams the VM's agent session has open. */
  agentStreams: () => Promise<number>;
}

const enc = new TextEncoder();
const JUNK_BODIES: Uint8Array[] = [
  new Uint8Array(0),
  enc.encode('{'),
  enc.encode('null'),
  enc.encode('{"bytes":-1}'),
  enc.encode('{"bytes":1e300}'),
  enc.encode('{"bytes":"9"}'),
  enc.encode(`{"bytes":${2 ** 53}}`),
  enc.encode('{"rows":0,"cols":-1}'),
  Uint8Array.from([0xff, 0xfe, 0x00, 0x80]),
  new Uint8Array(70_000),
];
const JUNK_SEQS = ['0', '-1', '1.5', 'x', '', '99999999999999999999', '1'];
const JUNK_KINDS = ['data', 'eof', 'resize', 'DATA', '', 'credit', '\u0000', 'x'.repeat(300)];

/** An HTTP/1.0 GET of `/small` over one port stream: the guest server's answer, whole. */
async function getSmall(st: ClientStream): Promise<string> {
  await st.write(enc.encode('GET /small HTTP/1.0\r\n\r\n'));
  await st.closeInput();
  let out = '';
  for await (const c of st) {
    if (c.kind === 'data') out += new TextDecoder().decode(c.bytes);
    if (c.kind === 'end') break;
  }
  return out;
}

/**
 * The fuzz of issue 18 for ports: hostile `port.open` bodies (to the host and the scheduler), then
 * junk on the stream subjects (`in`, `credit`, `cancel`) of unknown streams, of odd subjects and of
 * one live port stream. After it: the host answers, the VM runs, a port stream opened before the
 * fuzz (and never touched) still carries a request, and no agent stream is left.
 */
export async function fuzzPortSubjects(o: PortFuzzOptions): Promise<void> {
  const { nc, vm } = o;
  const h = o.host.hostId;
  const hostd = new HostdClient(nc, h, { timeoutMs: 30_000 });
  const before = (await hostd.call('vm.list', {})).vms.map((v) => [v.id, v.state]);
  const open = (subject: string): Promise<ClientStream> => openStream(nc, subject, { id: vm, port: o.port });
  const survivor = await open(subjects.host(h, 'port.open'));
  const victim = await open(subjects.sched('port.open'));

  const { rnd, pick, hostile } = hostileBodies(o.seed, 'snap-zzzzzzzzzzzz');
  const base: Base = { body: { id: vm, port: o.port }, fields: { id: 'id', port: 'int', key: 'key' }, required: ['id', 'port'] };
  let answered = 0;
  for (let i = 0; i < 150; i++) {
    const b = hostile(base);
    const subject = i % 2 ? subjects.sched('port.open') : subjects.host(h, 'port.open');
    const hdrs = b.contentType ? headers() : undefined;
    if (hdrs && b.contentType) hdrs.set('Content-Type', b.contentType);
    const r = await nc.request(subject, b.data, { timeout: 10_000, ...(hdrs ? { headers: hdrs } : {}) }).catch((e: unknown) => {
      // Over NATS's max_payload: the client refuses to send it, nothing reached a service.
      if (/payload/i.test(String(e))) return undefined;
      throw e;
    });
    answered++;
    if (!r) continue;
    // A body that is still valid opened a stream: nobody will read it, cancel it now.
    const reply = (() => {
      try {
        return r.json<{ stream?: { cancel?: string } }>();
      } catch {
        return undefined;
      }
    })();
    if (reply?.stream?.cancel) nc.publish(reply.stream.cancel);
  }
  assert.equal(answered, 150, 'every hostile open got an answer');

  const sid = (): string =>
    Array.from({ length: 22 }, () => pick([...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'])).join('');
  const prefix = subjects.hostPrefix(h);
  const victimSid = victim.ref.sid;
  for (let i = 0; i < 400; i++) {
    const what = pick(['in', 'credit', 'cancel', 'in.x', '', 'credit.credit']);
    const target = rnd() < 0.3 ? victimSid : pick([sid(), '', '*', 'x', victimSid.slice(1), survivor.ref.sid + 'x']);
    const subject = `${prefix}.stream.${target}${what ? '.' + what : ''}`.replace(/\.\.+/g, '.').replace(/\.$/, '');
    const hd = headers();
    if (rnd() < 0.8) hd.set(STREAM_HEADERS.seq, pick(JUNK_SEQS));
    if (rnd() < 0.8) hd.set(STREAM_HEADERS.kind, pick(JUNK_KINDS));
    if (subject.endsWith('.cancel') && target !== victimSid) continue; // a cancel of an unknown sid is nothing; skip the noise
    nc.publish(subject, pick(JUNK_BODIES), { headers: hd });
  }
  await nc.flush();

  // The junk-fed stream ends (a gap, a bad kind or junk credit is the client's violation); the end says so.
  await withDeadline(
    (async () => {
      for await (const c of victim) if (c.kind === 'end') return;
    })().catch(() => undefined),
    30_000,
    'the junk-fed stream ending',
  );
  assert.match(await getSmall(survivor), /^HTTP\/1\.[01] 200[\s\S]*\r\n\r\nsmall\n$/, 'the untouched stream still carries a request');
  assert.equal((await hostd.call('host.info', {})).id, h, 'hostd still answers');
  assert.deepEqual(
    (await hostd.call('vm.list', {})).vms.map((v) => [v.id, v.state]),
    before,
    'the VMs are as they were',
  );
  await pollUntil(async () => ((await o.agentStreams()) === 0 ? true : undefined), {
    timeoutMs: 30_000,
    what: 'no agent stream left after the fuzz',
  });
}
