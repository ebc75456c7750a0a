import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { headers } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import { ErrorCodes, ForkyError } from '@forky/base';
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
import { FuzzCluster } from '../helpers/fuzz-cluster.js';
import { NO_LAYER, RAW_HEADER_BLOCKS, hostileBodies, type Base, type Hostile } from '../helpers/fuzz-bodies.js';
import { GHOST_SNAP, GHOST_VM, HOSTILE_VALUES, HostileWriter, ODD_TOKENS } from '../helpers/fuzz-entries.js';
import { qemuPidsOf } from '../helpers/procs.js';
import { ensureImageOnce } from '../helpers/repo.js';

const TOTAL = Number(process.env.FORKY_FUZZ_REQUESTS ?? 10_000);
const SEED = Number(process.env.FORKY_FUZZ_SEED ?? 20261125);
/** `1`: the host runs no QEMU (its VMs are records), for a run on a busy machine. */
const DRY_RUN = process.env.FORKY_FUZZ_DRY_RUN === '1';
const HOST = 'fz1';
const ROGUE = 'fz2';
/** Reply subjects with bytes no client makes, each still UTF-8 (the client answers what it decodes). */
const ODD_REPLY_SUFFIXES = [[0x01], [0x00], [0x7f], [0x1b, 0x5b, 0x32, 0x4a], [0xc3, 0xbc], [0xe2, 0x80, 0xa8]].map((b) => Buffer.from(b));

/** What came back: the error status and content type from the headers, and the body. */
interface Answer {
  status?: string;
  contentType?: string;
  data: Uint8Array;
}
const count = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
const figures = (m: Map<string, number>): string =>
  [...m.entries()]
    .sort()
    .map(([c, n]) => `${c || '(none)'} ${n}`)
    .join(', ');

describe(
  'fuzz: hostile requests, headers, subjects and KV entries get a typed error, crash nothing and change nothing',
  { timeout: 900_000 },
  () => {
    let c: FuzzCluster;
    let vm: VmInfo;
    let snap: SnapshotInfo;

    const state = async () => ({
      vms: (await c.host.call('vm.list', {})).vms.map((v) => `${v.id}:${v.state}:${v.pid}:${JSON.stringify(v.network?.egress)}`).sort(),
      snapshots: (await c.host.call('snapshot.list', {})).snapshots.map((s) => s.id).sort(),
      qemu: (await qemuPidsOf([vm.id])).length,
      files: await c.files(),
      locator: await c.keys(BUCKETS.locator),
      requests: await c.keys(BUCKETS.requests),
      lineage: await c.keys(BUCKETS.lineage),
    });

    before(async () => {
      await ensureImageOnce();
      c = await FuzzCluster.start(HOST, ROGUE, { dryRun: DRY_RUN });
      vm = await c.host.call('vm.boot', {});
      // A second VM is snapshotted (paused), so the fuzzed VM keeps running and its snapshot exists.
      const other = await c.host.call('vm.boot', {});
      snap = await c.host.call('snapshot.create', { vm: other.id, resume: false });
      await c.host.call('vm.destroy', { id: other.id });
    });
    after(async () => {
      await c?.host.call('vm.destroy', { id: vm?.id ?? '' }).catch(() => undefined);
      await c?.host.call('snapshot.delete', { id: snap?.id ?? '', cascade: true }).catch(() => undefined);
      await c?.close();
    });

    it(`${TOTAL} requests, seed ${SEED}`, async (t) => {
      const id = { id: 'id' as const };
      const hostBases: Record<HostdEndpoint, Base> = {
        'host.info': { body: {}, fields: {}, required: [] },
        'host.ping': { body: {}, fields: {}, required: [] },
        'vm.boot': {
          body: { image: 'tiny', memMiB: 256, cpus: 1 },
          fields: { image: 'name', memMiB: 'int', cpus: 'int', key: 'key' },
          required: [],
        },
        'vm.list': { body: {}, fields: {}, required: [] },
        'vm.show': { body: { id: vm.id }, fields: id, required: ['id'] },
        'vm.pause': { body: { id: vm.id }, fields: id, required: ['id'] },
        'vm.resume': { body: { id: vm.id }, fields: id, required: ['id'] },
        'vm.destroy': { body: { id: vm.id }, fields: id, required: ['id'] },
        'vm.exec': {
          body: { id: vm.id, cmd: ['true'], timeoutMs: 5000 },
          fields: { id: 'id', cmd: 'cmd', timeoutMs: 'int', input: 'text' },
          required: ['id', 'cmd'],
        },
        // A layer no store has: the valid form is refused (NOT_FOUND) before the VM is touched.
        'vm.app': {
          body: { id: vm.id, apps: [{ layer: NO_LAYER, mount: '/app' }] },
          fields: { id: 'id', apps: 'apps', key: 'key' },
          required: ['id', 'apps'],
        },
        // The policy it has already: the valid form changes nothing.
        'vm.network': {
          body: { id: vm.id, network: { egress: vm.network?.egress ?? 'none' } },
          fields: { id: 'id', key: 'key' },
          required: ['id', 'network'],
        },
        // A valid form is skipped: the fuzzed VM never gets a TTL.
        'vm.extend': { body: { id: vm.id, ttlMs: 600_000 }, fields: { id: 'id', ttlMs: 'int' }, required: ['id', 'ttlMs'] },
        'snapshot.create': { body: { vm: vm.id, resume: true }, fields: { vm: 'id', resume: 'bool', key: 'key' }, required: ['vm'] },
        'snapshot.list': { body: {}, fields: {}, required: [] },
        'snapshot.show': { body: { id: snap.id }, fields: id, required: ['id'] },
        'snapshot.delete': { body: { id: snap.id, cascade: true }, fields: { id: 'id', cascade: 'bool' }, required: ['id'] },
        'snapshot.publish': { body: { id: snap.id }, fields: id, required: ['id'] },
        'snapshot.fetch': { body: { id: snap.id }, fields: id, required: ['id'] },
        fork: {
          body: { source: snap.id, count: 2, until: 'ready' },
          fields: { source: 'id', count: 'int', resumeParent: 'bool', until: 'enum', key: 'key' },
          required: ['source', 'count'],
        },
        // A key no fork was made under: the valid form finds nothing to undo.
        'fork.abandon': { body: { key: 'fuzz-no-such-fork' }, fields: { key: 'key' }, required: ['key'] },
        // The sandbox endpoints (STREAMS.md); a valid form is skipped, so nothing runs in the guest.
        'exec.start': {
          body: { id: vm.id, cmd: ['true'] },
          fields: { id: 'id', cmd: 'cmd', timeoutMs: 'int', stdin: 'bool', key: 'key' },
          required: ['id', 'cmd'],
        },
        'proc.attach': { body: { id: vm.id, pid: 1 }, fields: { id: 'id', pid: 'int', follow: 'bool' }, required: ['id', 'pid'] },
        'file.read': {
          body: { id: vm.id, path: '/etc/hostname' },
          fields: { id: 'id', path: 'text', offset: 'int' },
          required: ['id', 'path'],
        },
        'file.write': {
          body: { id: vm.id, path: '/tmp/fuzz' },
          fields: { id: 'id', path: 'text', parents: 'bool', key: 'key' },
          required: ['id', 'path'],
        },
        'file.watch': {
          body: { id: vm.id, path: '/tmp' },
          fields: { id: 'id', path: 'text', recursive: 'bool' },
          required: ['id', 'path'],
        },
        // Port 1: nothing listens there in the guest, so a valid open ends refused at once.
        'port.open': { body: { id: vm.id, port: 1 }, fields: { id: 'id', port: 'int', key: 'key' }, required: ['id', 'port'] },
        'proc.list': { body: { id: vm.id }, fields: id, required: ['id'] },
        'proc.signal': {
          body: { id: vm.id, pid: 1, signal: 'CONT' },
          fields: { id: 'id', pid: 'int', signal: 'enum' },
          required: ['id', 'pid'],
        },
        'file.list': { body: { id: vm.id, path: '/tmp' }, fields: { id: 'id', path: 'text' }, required: ['id', 'path'] },
        'file.stat': { body: { id: vm.id, path: '/tmp' }, fields: { id: 'id', path: 'text' }, required: ['id', 'path'] },
        'file.mkdir': {
          body: { id: vm.id, path: '/tmp/fuzz-d' },
          fields: { id: 'id', path: 'text', parents: 'bool' },
          required: ['id', 'path'],
        },
        'file.remove': {
          body: { id: vm.id, path: '/tmp/fuzz-none' },
          fields: { id: 'id', path: 'text', recursive: 'bool' },
          required: ['id', 'path'],
        },
        'file.rename': {
          body: { id: vm.id, from: '/tmp/fuzz-a', to: '/tmp/fuzz-b' },
          fields: { id: 'id', from: 'text', to: 'text' },
          required: ['id', 'from', 'to'],
        },
      };
      const { 'host.info': _info, 'snapshot.publish': _p, 'snapshot.fetch': _f, 'fork.abandon': _a, ...forwarded } = hostBases;
      const schedBases: Record<SchedEndpoint, Base> = {
        ...forwarded,
        hosts: { body: {}, fields: {}, required: [] },
        'snapshot.tree': { body: {}, fields: {}, required: [] },
        'vm.boot': {
          body: { image: 'tiny', memMiB: 256 },
          fields: { image: 'name', memMiB: 'int', cpus: 'int', host: 'name', key: 'key' },
          required: [],
        },
        fork: {
          body: { source: snap.id, count: 2 },
          fields: { source: 'id', count: 'int', host: 'name', spread: 'bool', resumeParent: 'bool', until: 'enum', key: 'key' },
          required: ['source', 'count'],
        },
        batch: { body: { items: [{ source: snap.id, count: 1 }] }, fields: { items: 'items', key: 'key' }, required: ['items'] },
        // Hostile forms only (a valid one is skipped): no template is made or removed.
        // An image no host has: every form is refused before a job is queued (a valid name alone would build a template).
        'template.create': {
          body: { name: 'fz-tpl', image: 'fz-no-image' },
          fields: { name: 'name', image: 'name', memMiB: 'int', cpus: 'int', key: 'key' },
          required: ['name'],
        },
        'template.list': { body: {}, fields: {}, required: [] },
        'template.show': { body: { name: 'fz-tpl' }, fields: { name: 'name' }, required: ['name'] },
        'template.delete': { body: { name: 'fz-tpl' }, fields: { name: 'name' }, required: ['name'] },
      };
      const targets = [
        ...HOSTD_ENDPOINTS.map((e) => ({
          subject: subjects.host(HOST, e),
          name: `hostd ${e}`,
          base: hostBases[e],
          schema: hostdContract[e].request,
        })),
        ...SCHED_ENDPOINTS.map((e) => ({
          subject: subjects.sched(e),
          name: `sched ${e}`,
          base: schedBases[e],
          schema: schedContract[e].request,
        })),
      ];
      const { rnd, pick, hostile } = hostileBodies(SEED, snap.id);
      /** True if `h` decoded as `contentType` is a valid request: an accident, not hostile. */
      const valid = (schema: (typeof targets)[number]['schema'], h: Hostile, contentType: string | undefined): boolean => {
        try {
          return schema.safeParse(decodeBody(h.data, contentType).value).success && !/zzzz|no-such/.test(h.how);
        } catch {
          return false;
        }
      };

      const before = await state();
      const codes = new Map<string, number>();
      const cases = new Map<string, number>();
      let sent = 0;
      let skipped = 0;
      const failures: string[] = [];
      const jobs: Array<() => Promise<void>> = [];
      while (jobs.length < TOTAL) {
        const target = targets[jobs.length % targets.length] as (typeof targets)[number];
        const h = hostile(target.base);
        // How it is sent: by the client, with raw header blocks the client refuses to make, or to an odd reply subject.
        const way = rnd();
        const block = way < 0.06 ? pick(RAW_HEADER_BLOCKS) : undefined;
        const suffix = way >= 0.06 && way < 0.1 && !h.contentType ? pick(ODD_REPLY_SUFFIXES) : undefined;
        const effective = block ? (block.format === 'msgpack' ? 'application/msgpack' : undefined) : h.contentType;
        if (block?.format !== 'unparsable' && valid(target.schema, h, effective)) {
          skipped++;
          continue;
        }
        const label = block ? `raw headers: ${block.how}` : suffix ? `reply subject ${suffix.toString('hex')}` : 'client';
        count(cases, block ? 'raw-headers' : suffix ? 'odd-reply' : h.category);
        jobs.push(async () => {
          let answer: Answer | undefined;
          try {
            if (block || suffix) {
              const r = await c.raw.request(target.subject, Buffer.from(h.data), {
                ...(block ? { headers: Buffer.from(block.block) } : {}),
                ...(suffix ? { replySuffix: suffix } : {}),
                timeoutMs: 10_000,
              });
              if (!r) throw new Error('no reply within 10 s');
              answer = {
                data: r.data,
                status: /Nats-Service-Error-Code: (\d+)/.exec(r.headers)?.[1],
                contentType: /Content-Type: ([^\r]*)/.exec(r.headers)?.[1],
              };
            } else {
              const hdrs = headers();
              if (h.contentType) hdrs.set('Content-Type', h.contentType);
              const msg = await c.op.request(target.subject, h.data, { timeout: 10_000, ...(h.contentType ? { headers: hdrs } : {}) });
              answer = {
                data: msg.data,
                status: msg.headers?.get('Nats-Service-Error-Code') || undefined,
                contentType: msg.headers?.get('Content-Type') || undefined,
              };
            }
          } catch (e) {
            failures.push(`${target.name} (${h.how}; ${label}): no reply: ${(e as Error).message}`);
            return;
          }
          sent++;
          let reply: { error?: { code?: string; message?: string } } | undefined;
          try {
            reply = decodeBody(answer.data, answer.contentType).value as typeof reply;
          } catch {
            reply = undefined;
          }
          const code = reply?.error?.code ?? '';
          count(codes, code);
          if (!answer.status) failures.push(`${target.name} (${h.how}; ${label}): answered without an error`);
          else if (!(code in ErrorCodes) || code === 'INTERNAL' || code === 'QEMU')
            failures.push(`${target.name} (${h.how}; ${label}): error code ${JSON.stringify(code)}: ${reply?.error?.message}`);
          else if (/\n\s+at |node:internal|\.js:\d+/.test(reply?.error?.message ?? ''))
            failures.push(`${target.name} (${h.how}; ${label}): a stack on the wire`);
        });
      }
      // 16 in flight: enough to overlap, few enough that no request waits near its deadline.
      let next = 0;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next < jobs.length) await (jobs[next++] as () => Promise<void>)();
        }),
      );

      const afterState = await state();
      assert.equal(c.crashes(), 0, 'no service process exited');
      assert.deepEqual(afterState, before, 'no state changed: VMs, snapshots, QEMU processes, files, KV keys');
      assert.equal((await c.host.call('host.info', {})).id, HOST, 'hostd still answers');
      assert.equal((await c.sched.call('hosts', {})).hosts.length, 1, 'the scheduler still answers');
      t.diagnostic(
        `requests tried: ${jobs.length} over ${targets.length} endpoints (${skipped} accidental valid ones skipped); answered: ${sent}; crashes: ${c.crashes()}; state changes: 0`,
      );
      t.diagnostic(`error codes: ${figures(codes)}`);
      t.diagnostic(`cases: ${figures(cases)}`);
      assert.deepEqual(failures.slice(0, 20), [], `${failures.length} requests were not answered with a typed error`);
      assert.ok(jobs.length >= TOTAL);
    });

    it('hostile entries in every bucket a host may write, and heartbeats on odd subjects: read back, logged, ignored', async (t) => {
      const before = await state();
      const tree = (await c.sched.call('snapshot.tree', {})).nodes;
      const vmIds = (await c.sched.call('vm.list', {})).vms.map((v) => v.id).sort();
      const realBeat = (await (await new Kvm(c.op).open(BUCKETS.hosts)).get(HOST))?.value ?? new Uint8Array();
      const writer = await HostileWriter.open(c.nats.url, c.nats.port, ROGUE, c.auth.hosts[ROGUE] as { user: string; pass: string });
      const codes = new Map<string, number>();
      const failures: string[] = [];
      let probes = 0;
      let oddBeats = 0;
      /** One read after the entries are in: `expect` is the code it must fail with, or 'ok' and a check. */
      const probe = async (name: string, call: () => Promise<unknown>, expect: string, check?: (r: unknown) => void): Promise<void> => {
        probes++;
        const got = await call().then(
          (r) => {
            check?.(r);
            return 'ok';
          },
          (e: unknown) => (e instanceof ForkyError ? e.code : `untyped: ${String(e)}`),
        );
        count(codes, got);
        if (got !== expect && !(expect === 'typed' && got in ErrorCodes)) failures.push(`${name}: ${got}, expected ${expect}`);
      };
      const reads = async (how: string): Promise<void> => {
        await probe(
          `hosts (${how})`,
          () => c.sched.call('hosts', {}),
          'ok',
          (r) =>
            assert.deepEqual(
              (r as { hosts: Array<{ id: string }> }).hosts.map((h) => h.id),
              [HOST],
            ),
        );
        await probe(`vm.show ghost (${how})`, () => c.sched.call('vm.show', { id: GHOST_VM }), 'NOT_FOUND');
        await probe(`snapshot.show ghost (${how})`, () => c.sched.call('snapshot.show', { id: GHOST_SNAP }), 'NOT_FOUND');
        await probe(`fork ghost (${how})`, () => c.sched.call('fork', { source: GHOST_SNAP, count: 1 }), 'NOT_FOUND');
        await probe(`snapshot.delete ghost (${how})`, () => c.sched.call('snapshot.delete', { id: GHOST_SNAP }), 'NOT_FOUND');
        await probe(
          `snapshot.tree (${how})`,
          () => c.sched.call('snapshot.tree', {}),
          'ok',
          (r) => assert.deepEqual((r as { nodes: unknown }).nodes, tree),
        );
        await probe(`vm.show real (${how})`, () => c.sched.call('vm.show', { id: vm.id }), 'ok');
        await probe(
          `vm.list (${how})`,
          () => c.sched.call('vm.list', {}),
          'ok',
          (r) => assert.deepEqual((r as { vms: VmInfo[] }).vms.map((v) => v.id).sort(), vmIds),
        );
        // A manifest that is not one, in the parts store: refused with a code, nothing fetched.
        await probe(`hostd snapshot.fetch ghost (${how})`, () => c.host.call('snapshot.fetch', { id: GHOST_SNAP }), 'typed');
        await probe(`hostd host.info (${how})`, () => c.host.call('host.info', {}), 'ok');
      };
      try {
        for (const v of HOSTILE_VALUES) {
          await writer.writeEverywhere(v.value);
          // Heartbeats on subjects no host has (the operator may publish anywhere): garbage, and a real beat replayed.
          for (const tok of ODD_TOKENS) {
            for (const body of [v.value, realBeat]) c.raw.publish(Buffer.concat([Buffer.from('forky.v1.hb.'), tok]), Buffer.from(body));
            oddBeats += 2;
          }
          await c.raw.flush();
          await reads(v.how);
        }
        // A scheduler that starts now reads the hosts bucket, the rogue's last value in it, from scratch.
        await c.stop(c.procs[1] as (typeof c.procs)[number]);
        await c.startScheduler('sched-b');
        await reads('a scheduler started after');
      } finally {
        await writer.removeAll();
        await writer.close();
      }
      assert.equal(c.crashes(), 0, 'no service process exited');
      assert.deepEqual(await state(), before, 'no state changed: VMs, snapshots, QEMU processes, files, KV keys');
      t.diagnostic(
        `hostile entries: ${writer.written} writes of ${HOSTILE_VALUES.length} values with host ${ROGUE}'s credentials (hosts key, heartbeat, locator, lineage, parts; ${ODD_TOKENS.length} odd keys per bucket); ${oddBeats} heartbeats on odd subjects`,
      );
      const unanswered = (codes.get('TIMEOUT') ?? 0) + (codes.get('UNAVAILABLE') ?? 0);
      t.diagnostic(
        `reads after them: ${probes} tried, answered: ${probes - unanswered}; crashes: ${c.crashes()}; state changes: 0; codes: ${figures(codes)}`,
      );
      assert.deepEqual(failures.slice(0, 20), [], `${failures.length} reads went wrong`);
    });
  },
);
