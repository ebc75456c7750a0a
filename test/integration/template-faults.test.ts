import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { delay } from '@forky/base';
import type { VmInfo } from '@forky/contract';
import { refused } from '../helpers/errors.js';
import { HOST_CALL_MS, startTemplateCluster, type TemplateCluster } from '../helpers/template-cluster.js';

/**
 * template.create under faults (review findings 2, 3, 10, 11), over a real nats-server and
 * scheduler and two fake hosts: replies lost after the host did the work, a build host that dies,
 * a takeover that resumes, records that do not parse, requests refused before they are queued.
 */
describe('template.create: nothing leaks, nothing runs twice', { timeout: 240_000 }, () => {
  let c: TemplateCluster;
  const vm = (id: string, host: string): VmInfo => ({
    id,
    host,
    state: 'running',
    image: 'tiny',
    memMiB: 256,
    cpus: 1,
    accel: 'tcg',
    createdAt: new Date().toISOString(),
  });
  const boot = { image: 'tiny', memMiB: 256, cpus: 1 };

  before(async () => {
    c = await startTemplateCluster('tf');
  });
  after(async () => {
    await c?.stop();
  });

  it('a builder whose boot reply was lost is found under its key and destroyed before the next attempt', async () => {
    let first = true;
    c.a.after['vm.boot'] = async () => {
      if (first) {
        first = false;
        await delay(HOST_CALL_MS + 1_000);
      }
    };
    const t = await c.createDone({ name: 'lost-boot', host: c.a.id, key: 'tf-lost-boot-01' });
    delete c.a.after['vm.boot'];
    assert.equal(t.host, c.a.id);
    assert.deepEqual([...c.a.vms.keys()], [], 'both attempts’ builders are destroyed');
    const keys = c.a.calls.filter((x) => x.endpoint === 'vm.boot').map((x) => x.req.key);
    assert.equal(keys.length, 3, 'the first boot, its repeat under the same key, the second attempt’s');
    assert.equal(new Set(keys).size, 2);
    assert.deepEqual([...c.a.snaps.keys()], [t.snapshot]);
    assert.equal(await c.buildRecord('tf-lost-boot-01'), undefined, 'the build record is dropped');
  });

  it('a snapshot whose reply was lost is found under its key and deleted', async () => {
    const had = new Set(c.a.snaps.keys());
    const snaps = c.a.count('snapshot.create');
    let first = true;
    c.a.after['snapshot.create'] = async () => {
      if (first) {
        first = false;
        await delay(HOST_CALL_MS + 1_000);
      }
    };
    const t = await c.createDone({ name: 'lost-snap', host: c.a.id, key: 'tf-lost-snap-01' });
    delete c.a.after['snapshot.create'];
    assert.equal(c.a.count('snapshot.create') - snaps, 3, 'the first, its repeat under the same key, the second attempt’s');
    assert.deepEqual(
      [...c.a.snaps.keys()].filter((s) => !had.has(s)),
      [t.snapshot],
      'only the template’s snapshot stays',
    );
    assert.deepEqual([...c.a.vms.keys()], []);
  });

  it('a takeover resumes after the steps done; one with the snapshot taken only publishes and files it', async () => {
    // The reaper round after the last create sweeps build records of ended jobs: let it end first.
    await c.sched.running.scheduler.reap();
    c.a.vms.set('vm-tfresume0001', vm('vm-tfresume0001', c.a.id));
    // As a scheduler that died after step 2 of 3 left it.
    await c.templates.put(
      'build.tf-resume-0001',
      JSON.stringify({ name: 'resumed', boot, host: c.a.id, gen: 0, vm: 'vm-tfresume0001', steps: 2 }),
    );
    const boots = c.a.count('vm.boot');
    const execs = c.a.calls.length;
    const t = await c.createDone({ name: 'resumed', host: c.a.id, run: ['s0', 's1', 's2'], key: 'tf-resume-0001' });
    assert.equal(c.a.count('vm.boot'), boots, 'no new builder');
    const ran = c.a.calls.slice(execs).filter((x) => x.endpoint === 'vm.exec');
    assert.deepEqual(
      ran.map((x) => (x.req['cmd'] as string[]).at(-1)),
      ['s2'],
      'only the step not done',
    );
    assert.ok(!c.a.vms.has('vm-tfresume0001'), 'the builder is destroyed');
    assert.equal(t.name, 'resumed');

    const snaps = c.a.count('snapshot.create');
    await c.sched.running.scheduler.reap();
    await c.templates.put('build.tf-resume-0002', JSON.stringify({ name: 'resumed2', boot, host: c.a.id, gen: 0, snapshot: t.snapshot }));
    const t2 = await c.createDone({ name: 'resumed2', host: c.a.id, run: ['s0'], key: 'tf-resume-0002' });
    assert.equal(t2.snapshot, t.snapshot);
    assert.equal(c.a.count('snapshot.create'), snaps, 'no second snapshot');
  });

  it('a build whose host died moves on; what it left there is cleaned up by the reaper once the host is back', async () => {
    await c.sched.running.scheduler.reap();
    c.a.vms.set('vm-tfmoved00001', vm('vm-tfmoved00001', c.a.id));
    await c.templates.put(
      'build.tf-moved-00001',
      JSON.stringify({ name: 'moved', boot, host: c.a.id, gen: 3, vm: 'vm-tfmoved00001', steps: 1, pending: [] }),
    );
    await c.a.down();
    await c.seen(c.a.id, false);
    const t = await c.createDone({ name: 'moved', run: ['s0'], key: 'tf-moved-00001' });
    assert.equal(t.host, c.b.id);
    assert.deepEqual([...c.b.vms.keys()], []);
    const left = await c.buildRecord('tf-moved-00001');
    assert.equal(left?.['over'], true, 'kept, over, for what is left on the dead host');
    assert.deepEqual(
      (left?.['left'] as Array<{ vm?: string }>).map((x) => x.vm),
      ['vm-tfmoved00001'],
    );
    await c.a.up();
    await c.seen(c.a.id, true);
    await c.sched.running.scheduler.reap();
    assert.ok(!c.a.vms.has('vm-tfmoved00001'), 'the old builder is destroyed');
    assert.equal(await c.buildRecord('tf-moved-00001'), undefined);
  });

  it('a build record that does not parse is replaced, not spun on', async () => {
    await c.templates.put('build.tf-garbage-001', '{"host": 42');
    const t = await c.createDone({ name: 'garbage', host: c.b.id, key: 'tf-garbage-001' });
    assert.equal(t.name, 'garbage');
    assert.equal(await c.buildRecord('tf-garbage-001'), undefined);
  });

  it('a ready command that never succeeds fails once (not retried), cleaned up, record dropped', async () => {
    c.b.exec = (cmd) => (cmd === 'never-ready' ? { exitCode: 1, stdout: '', stderr: 'no' } : { exitCode: 0, stdout: '', stderr: '' });
    const boots = c.b.count('vm.boot');
    const e = await refused(
      c.createDone({ name: 'notready', host: c.b.id, ready: 'never-ready', readyTimeoutMs: 1_000, key: 'tf-notready-01' }),
    );
    assert.equal(e.code, 'TIMEOUT');
    assert.equal(e.details?.field, 'ready');
    assert.equal(c.b.count('vm.boot'), boots + 1, 'one attempt');
    assert.deepEqual([...c.b.vms.keys()], []);
    // Sent again under its key after it failed: a new build, not the first one's remembered (gone) builder.
    const again = await refused(
      c.createDone({ name: 'notready', host: c.b.id, ready: 'never-ready', readyTimeoutMs: 1_000, key: 'tf-notready-01' }),
    );
    c.b.exec = () => ({ exitCode: 0, stdout: '', stderr: '' });
    assert.equal(again.code, 'TIMEOUT', again.message);
    assert.equal(c.b.count('vm.boot'), boots + 2);
    assert.deepEqual([...c.b.vms.keys()], []);
    assert.equal(await c.buildRecord('tf-notready-01'), undefined);
  });

  it('a delivery that finds its template filed returns it and drops the build record left over', async () => {
    const t0 = await c.createDone({ name: 'again0', host: c.b.id, key: 'tf-again-00000' });
    await c.sched.running.scheduler.reap();
    // As a scheduler that filed it and died before the job's outcome was recorded left it.
    await c.templates.put('again', JSON.stringify({ ...t0, name: 'again', key: 'tf-again-00001' }));
    await c.templates.put('build.tf-again-00001', JSON.stringify({ name: 'again', boot, host: c.b.id, gen: 0, snapshot: t0.snapshot }));
    const boots = c.b.count('vm.boot');
    const again = await c.createDone({ name: 'again', host: c.b.id, key: 'tf-again-00001' });
    assert.equal(again.snapshot, t0.snapshot);
    assert.equal(c.b.count('vm.boot'), boots, 'not built again');
    assert.ok(c.b.snaps.has(t0.snapshot), 'the filed snapshot is not deleted');
    assert.equal(await c.buildRecord('tf-again-00001'), undefined);
  });

  it('refuses before queuing: an unknown pinned host, memory no host has, an image no host has', async () => {
    const cases = [
      [{ name: 'p1', host: 'nope-host', key: 'tf-pre-000001' }, 'NOT_FOUND', undefined],
      [{ name: 'p2', memMiB: 65536, key: 'tf-pre-000002' }, 'CAPACITY', 'memMiB'],
      [{ name: 'p3', image: 'no-such-image', key: 'tf-pre-000003' }, 'BAD_REQUEST', 'image'],
      [{ name: 'p4', image: 'no-such-image', host: c.b.id, key: 'tf-pre-000004' }, 'BAD_REQUEST', 'image'],
    ] as const;
    for (const [req, code, field] of cases) {
      const e = await refused(c.sched.client.call('template.create', req));
      assert.equal(e.code, code, JSON.stringify(req));
      if (field) assert.equal(e.details?.field, field);
      assert.equal(await c.requests.get(req.key), null, `${req.key}: no requests record`);
    }
  });
});
