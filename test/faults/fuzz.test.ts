import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { headers } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import { pack } from 'msgpackr';
import { ErrorCodes } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';
import {
  BUCKETS,
  HOSTD_ENDPOINTS,
  SCHED_ENDPOINTS,
  decodeBody,
  hostdContract,
  schedContract,
  subjects,
  type HostdEndpoint,
  type SchedEndpoint,
  type SnapshotInfo,
  type VmInfo,
} from '@forky/contract';
import { fileTree } from '../helpers/files.js';
import { startTestHost, type TestHost } from '../helpers/hostd.js';
import { qemuPidsOf } from '../helpers/procs.js';
import { ensureImage } from '../helpers/repo.js';
import { startTestScheduler, type TestScheduler } from '../helpers/scheduler.js';

const TOTAL = Number(process.env.FORKY_FUZZ_REQUESTS ?? 10_000);
const SEED = Number(process.env.FORKY_FUZZ_SEED ?? 20261125);
const enc = new TextEncoder();
/** The digest of an app layer that no store holds. */
const NO_LAYER = 'e'.repeat(64);

/** mulberry32: a small seeded PRNG, so a failing request can be replayed from the seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Kind = 'id' | 'key' | 'name' | 'int' | 'bool' | 'cmd' | 'text' | 'items' | 'enum' | 'apps';
interface Base {
  body: Record<string, unknown>;
  fields: Record<string, Kind>;
  /** Fields whose absence makes the request invalid (others have defaults: removing them is harmless). */
  required: string[];
}

const BAD_STRINGS = ['', '../../../etc/passwd', '/etc/shadow', 'vm-../../../../tmp/x', 'snap-aaaaaaaaaaaa/../../x', 'x'.repeat(70_000), 'vm-AAAAAAAAAAAA', '\u0000', 'vm-\u0000aaaaaaaaaa', 'vm-aaaaaaaaaaa\n', '%2e%2e%2f', '😀'.repeat(20), ' vm-aaaaaaaaaaaa'];
const NOT_STRINGS = [0, 1.5, -1, true, false, null, [], {}, ['vm-aaaaaaaaaaaa'], { id: 'x' }];
const BAD_INTS = ['1', '256', 1.5, -1, 1e300, -1e300, 2 ** 60, Number.MAX_SAFE_INTEGER + 2, true, null, [], {}, [1]];
const BAD_BOOLS = ['true', 'false', 1, 0, null, [], {}, 'yes'];
const UNKNOWN_KEYS = ['x', '__proto__', 'constructor', 'prototype', 'toString', 'ID', 'hostId', 'a'.repeat(300), '', 'id ', '$where'];

describe('fuzz: hostile requests to every endpoint get a typed error and change nothing', { timeout: 900_000 }, () => {
  let nats: NatsServer;
  let host: TestHost;
  let sched: TestScheduler;
  let vm: VmInfo;
  let snap: SnapshotInfo;

  const state = async () => ({
    vms: (await host.client.call('vm.list', {})).vms.map((v) => `${v.id}:${v.state}:${v.pid}`).sort(),
    snapshots: (await host.client.call('snapshot.list', {})).snapshots.map((s) => s.id).sort(),
    qemu: (await qemuPidsOf([vm.id])).length,
    files: [...(await fileTree(host.dataDir)), ...(await fileTree(host.ramDir))],
    locator: await keys(BUCKETS.locator),
    requests: await keys(BUCKETS.requests),
    lineage: await keys(BUCKETS.lineage),
  });
  const keys = async (bucket: string): Promise<string[]> => {
    const kv = await new Kvm(host.nc).open(bucket);
    const out: string[] = [];
    for await (const k of await kv.keys()) out.push(k);
    return out.sort();
  };

  before(async () => {
    await ensureImage();
    nats = await startNatsServer();
    host = await startTestHost(nats.url);
    sched = await startTestScheduler(nats.url);
    vm = await host.client.call('vm.boot', {});
    // A second VM is snapshotted (paused), so the fuzzed VM keeps running and its snapshot exists.
    const other = await host.client.call('vm.boot', {});
    snap = await host.client.call('snapshot.create', { vm: other.id, resume: false });
    await host.client.call('vm.destroy', { id: other.id });
  });
  after(async () => {
    await sched?.stop();
    await host?.stop();
    await nats?.stop();
  });

  it(`${TOTAL} requests, seed ${SEED}`, async (t) => {
    const id = { id: 'id' as const };
    const hostBases: Record<HostdEndpoint, Base> = {
      'host.info': { body: {}, fields: {}, required: [] },
      'vm.boot': { body: { image: 'tiny', memMiB: 256, cpus: 1 }, fields: { image: 'name', memMiB: 'int', cpus: 'int', key: 'key' }, required: [] },
      'vm.list': { body: {}, fields: {}, required: [] },
      'vm.show': { body: { id: vm.id }, fields: id, required: ['id'] },
      'vm.pause': { body: { id: vm.id }, fields: id, required: ['id'] },
      'vm.resume': { body: { id: vm.id }, fields: id, required: ['id'] },
      'vm.destroy': { body: { id: vm.id }, fields: id, required: ['id'] },
      'vm.exec': { body: { id: vm.id, cmd: ['true'], timeoutMs: 5000 }, fields: { id: 'id', cmd: 'cmd', timeoutMs: 'int', input: 'text' }, required: ['id', 'cmd'] },
      // A layer no store has: the valid form is refused (NOT_FOUND) before the VM is touched.
      'vm.app': { body: { id: vm.id, apps: [{ layer: NO_LAYER, mount: '/app' }] }, fields: { id: 'id', apps: 'apps', key: 'key' }, required: ['id', 'apps'] },
      'snapshot.create': { body: { vm: vm.id, resume: true }, fields: { vm: 'id', resume: 'bool', key: 'key' }, required: ['vm'] },
      'snapshot.list': { body: {}, fields: {}, required: [] },
      'snapshot.show': { body: { id: snap.id }, fields: id, required: ['id'] },
      'snapshot.delete': { body: { id: snap.id, cascade: true }, fields: { id: 'id', cascade: 'bool' }, required: ['id'] },
      'snapshot.publish': { body: { id: snap.id }, fields: id, required: ['id'] },
      'snapshot.fetch': { body: { id: snap.id }, fields: id, required: ['id'] },
      fork: { body: { source: snap.id, count: 2, until: 'ready' }, fields: { source: 'id', count: 'int', resumeParent: 'bool', until: 'enum', key: 'key' }, required: ['source', 'count'] },
    };
    const { 'host.info': _info, 'snapshot.publish': _p, 'snapshot.fetch': _f, ...forwarded } = hostBases;
    const schedBases: Record<SchedEndpoint, Base> = {
      ...forwarded,
      hosts: { body: {}, fields: {}, required: [] },
      'snapshot.tree': { body: {}, fields: {}, required: [] },
      'vm.boot': { body: { image: 'tiny', memMiB: 256 }, fields: { image: 'name', memMiB: 'int', cpus: 'int', host: 'name', key: 'key' }, required: [] },
      fork: { body: { source: snap.id, count: 2 }, fields: { source: 'id', count: 'int', host: 'name', spread: 'bool', resumeParent: 'bool', until: 'enum', key: 'key' }, required: ['source', 'count'] },
      batch: { body: { items: [{ source: snap.id, count: 1 }] }, fields: { items: 'items', key: 'key' }, required: ['items'] },
    };
    const targets = [
      ...HOSTD_ENDPOINTS.map((e) => ({ subject: subjects.host(host.hostId, e), name: `hostd ${e}`, base: hostBases[e], schema: hostdContract[e].request })),
      ...SCHED_ENDPOINTS.map((e) => ({ subject: subjects.sched(e), name: `sched ${e}`, base: schedBases[e], schema: schedContract[e].request })),
    ];

    const rnd = prng(SEED);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
    const badFor = (kind: Kind): unknown => {
      switch (kind) {
        case 'id':
          return pick([...BAD_STRINGS, ...NOT_STRINGS, 'vm-zzzzzzzzzzzz', 'snap-zzzzzzzzzzzz']);
        case 'key':
          return pick([...BAD_STRINGS, ...NOT_STRINGS, 'short', 'k'.repeat(65)]);
        case 'name':
          return pick([...BAD_STRINGS, ...NOT_STRINGS, 'no-such-thing']);
        case 'int':
          return pick(BAD_INTS);
        case 'bool':
          return pick(BAD_BOOLS);
        case 'enum':
          return pick(['READY', 'now', '', 1, null, ['ready']]);
        case 'cmd':
          return pick(['true', [], [1], [null], [{}], Array.from({ length: 300 }, () => 'x'), ['x'.repeat(70_000)], null, {}]);
        case 'text':
          return pick([1, null, [], {}, 'x'.repeat((1 << 19) + 1)]);
        case 'apps':
          return pick([
            [],
            {},
            null,
            [{ layer: NO_LAYER }],
            [{ layer: 'ab', mount: '/app' }],
            [{ layer: NO_LAYER, mount: '/app/../../etc' }],
            [{ layer: NO_LAYER, mount: 'app' }],
            [{ layer: NO_LAYER, mount: '/' }],
            [{ layer: NO_LAYER, mount: '/data/x' }],
            [{ layer: NO_LAYER, mount: '/proc' }],
            [{ layer: NO_LAYER, mount: '/a b' }],
            [{ layer: `${NO_LAYER.slice(1)}/`, mount: '/app' }],
            [{ layer: NO_LAYER, mount: '/app', x: 1 }],
            [{ layer: NO_LAYER, mount: '/app' }, { layer: NO_LAYER, mount: '/app' }],
            Array.from({ length: 5 }, (_, i) => ({ layer: NO_LAYER, mount: `/a${i}` })),
          ]);
        case 'items':
          return pick([[], {}, 'x', null, [{}], [{ source: snap.id }], [{ source: snap.id, count: 0 }], [{ source: snap.id, count: 1, x: 1 }], Array.from({ length: 1001 }, () => ({ source: snap.id, count: 1 }))]);
      }
    };
    /** One hostile body: a mutation of a valid request, or a broken encoding. */
    const hostile = (base: Base): { data: Uint8Array; contentType?: string; how: string } => {
      const fields = Object.keys(base.fields);
      const format = rnd() < 0.5 ? 'json' : 'msgpack';
      const encode = (v: unknown): Uint8Array => (format === 'json' ? enc.encode(JSON.stringify(v)) : pack(v));
      const r = rnd();
      if (r < 0.3 && fields.length > 0) {
        const f = pick(fields);
        const v = badFor(base.fields[f] as Kind);
        return { data: encode({ ...base.body, [f]: v }), how: `${format} ${f}=${JSON.stringify(v)?.slice(0, 60)}` };
      }
      if (r < 0.45) {
        const k = pick(UNKNOWN_KEYS);
        const body = { ...base.body };
        Object.defineProperty(body, k, { value: pick([1, 'x', null, { polluted: true }]), enumerable: true, configurable: true, writable: true });
        return { data: encode(body), how: `${format} unknown field ${JSON.stringify(k.slice(0, 20))}` };
      }
      if (r < 0.55 && base.required.length > 0) {
        const { [pick(base.required)]: _gone, ...rest } = base.body;
        return { data: encode(rest), how: `${format} missing a required field` };
      }
      if (r < 0.7) {
        // Truncated: never to zero bytes, which is the valid empty request `{}`.
        const full = encode(base.body);
        const cut = 1 + Math.floor(rnd() * Math.max(1, full.length - 1));
        return { data: full.slice(0, cut), how: `${format} truncated to ${cut} of ${full.length}` };
      }
      if (r < 0.8) {
        const data = new Uint8Array(1 + Math.floor(rnd() * 200)).map(() => Math.floor(rnd() * 256));
        return { data, how: 'random bytes' };
      }
      if (r < 0.85) return { data: encode(pick([[base.body], 'text', 42, null, true])), how: `${format} not a map` };
      if (r < 0.9) return { data: encode(base.body), contentType: format === 'json' ? 'application/msgpack' : 'application/json', how: `${format} with the other content type` };
      if (r < 0.95) {
        const depth = 1000 + Math.floor(rnd() * 50_000);
        const data = format === 'json' ? enc.encode(`{"x":${'['.repeat(depth)}${']'.repeat(depth)}}`) : new Uint8Array([0x81, 0xa1, 0x78, ...new Array<number>(depth).fill(0x91), 0xc0]);
        return { data, how: `${format} nested ${depth} deep` };
      }
      return { data: enc.encode(pick(['{', '{"id":', '{"a":1}}', '{"a":NaN}', "{'a':1}", '{"count":1,}', `{"x":"${'y'.repeat(900_000)}"}`])), how: 'broken JSON' };
    };

    const before = await state();
    const codes = new Map<string, number>();
    let sent = 0;
    let skipped = 0;
    const failures: string[] = [];
    const jobs: Array<() => Promise<void>> = [];
    while (jobs.length < TOTAL) {
      const target = targets[jobs.length % targets.length] as (typeof targets)[number];
      const h = hostile(target.base);
      // A mutation that happens to be valid (random bytes decoding to `{}`) is not hostile: skip it.
      try {
        if (target.schema.safeParse(decodeBody(h.data, h.contentType).value).success && !/zzzz|no-such/.test(h.how)) {
          skipped++;
          continue;
        }
      } catch {
        // Undecodable: hostile, as wanted.
      }
      jobs.push(async () => {
        const hdrs = headers();
        if (h.contentType) hdrs.set('Content-Type', h.contentType);
        let msg;
        try {
          msg = await host.nc.request(target.subject, h.data, { timeout: 10_000, ...(h.contentType ? { headers: hdrs } : {}) });
        } catch (e) {
          failures.push(`${target.name} (${h.how}): no reply: ${(e as Error).message}`);
          return;
        }
        sent++;
        const status = msg.headers?.get('Nats-Service-Error-Code');
        let reply: { error?: { code?: string; message?: string } } | undefined;
        try {
          reply = decodeBody(msg.data, msg.headers?.get('Content-Type') || undefined).value as typeof reply;
        } catch {
          reply = undefined;
        }
        const code = reply?.error?.code ?? '';
        codes.set(code, (codes.get(code) ?? 0) + 1);
        if (!status) failures.push(`${target.name} (${h.how}): answered without an error`);
        else if (!(code in ErrorCodes) || code === 'INTERNAL' || code === 'QEMU') failures.push(`${target.name} (${h.how}): error code ${JSON.stringify(code)}: ${reply?.error?.message}`);
        else if (/\n\s+at |node:internal|\.js:\d+/.test(reply?.error?.message ?? '')) failures.push(`${target.name} (${h.how}): a stack on the wire`);
      });
    }
    // 16 in flight: enough to overlap, few enough that no request waits near its deadline.
    let next = 0;
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < jobs.length) await (jobs[next++] as () => Promise<void>)();
    }));

    const afterState = await state();
    assert.deepEqual(afterState, before, 'no state changed: VMs, snapshots, QEMU processes, files, KV keys');
    assert.equal((await host.client.call('host.info', {})).id, host.hostId, 'hostd still answers');
    assert.equal((await sched.client.call('hosts', {})).hosts.length, 1, 'the scheduler still answers');
    t.diagnostic(`requests tried: ${jobs.length} over ${targets.length} endpoints (${skipped} accidental valid ones skipped); answered: ${sent}; crashes: 0; state changes: 0`);
    t.diagnostic(`error codes: ${[...codes.entries()].map(([c, n]) => `${c || '(none)'} ${n}`).join(', ')}`);
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} requests were not answered with a typed error`);
    assert.ok(jobs.length >= TOTAL);
  });
});
