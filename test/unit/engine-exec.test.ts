import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pollUntil, silentLogger } from '@forky/base';
import { ExecRequest, type ExecResult } from '@forky/contract';
import { EXEC_MEMORY, Requests, writeJsonAtomic, type RecordStore } from '@forky/hostd/internal';
import { hostFor, type EngineHost } from '../helpers/engine-host.js';
import { boot, reportDuration } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';

/**
 * Exec under an idempotency key (issue 16, item 4): run once per key; a repeat, while the first
 * runs or after, gets the first run's outcome (its failure too, once the command reached the
 * guest: a command that timed out may have run). A keyless exec is never deduped.
 */
const execReq = (id: string, over: Partial<ExecRequest> = {}): ExecRequest =>
  ExecRequest.parse({ id, cmd: ['sh', '-c', 'echo run >> /tmp/runs'], ...over });
const runs = (h: EngineHost, mark: number): number => h.plan.count('runtime.exec', mark);

describe('engine: exec by key', { concurrency: true }, () => {
  it('runs a keyed exec once; a repeat gets the same result', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const mark = h.plan.calls.length;
    const first = await h.engine.exec(execReq(vm.id, { key: 'key-exec-a' }));
    const again = await h.engine.exec(execReq(vm.id, { key: 'key-exec-a' }));
    assert.equal(again, first, 'the very same result');
    assert.equal(runs(h, mark), 1, 'the command ran once');
  });

  it('a repeat while the first still runs waits for it, and both get its failure (a timeout): the command is not run again', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    let release!: () => void;
    h.plan.fail('runtime.exec', { gate: new Promise<void>((r) => (release = r)) });
    const mark = h.plan.calls.length;
    const first = refused(h.engine.exec(execReq(vm.id, { key: 'key-exec-b' })));
    await pollUntil(async () => (runs(h, mark) === 1 ? true : undefined), { timeoutMs: 2000, what: 'the exec in the guest' });
    const again = refused(h.engine.exec(execReq(vm.id, { key: 'key-exec-b' })));
    release();
    const [e1, e2] = await Promise.all([first, again]);
    assert.match(e1.message, /injected failure of runtime\.exec/);
    assert.equal(e2, e1, 'the repeat gets the first run’s failure');
    const later = await refused(h.engine.exec(execReq(vm.id, { key: 'key-exec-b' })));
    assert.equal(later, e1, 'and so does one after it');
    assert.equal(runs(h, mark), 1, 'the command reached the guest once');
  });

  it('never dedupes a keyless exec', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    const mark = h.plan.calls.length;
    for (let i = 0; i < 3; i++) await h.engine.exec(execReq(vm.id));
    assert.equal(runs(h, mark), 3);
  });

  it('refuses the key for another command or request, running nothing', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    await h.engine.exec(execReq(vm.id, { key: 'key-exec-c' }));
    const mark = h.plan.calls.length;
    const other = await refused(h.engine.exec(execReq(vm.id, { key: 'key-exec-c', cmd: ['true'] })));
    assert.equal(other.code, 'CONFLICT');
    const snap = await refused(h.engine.snapshot({ vm: vm.id, resume: true, key: 'key-exec-c' }));
    assert.equal(snap.code, 'CONFLICT');
    assert.deepEqual(h.plan.calls.slice(mark), [], 'no port was called');
  });

  it('a refusal before the guest is reached is not remembered: the key runs once the VM can', async (t) => {
    const h = await hostFor(t);
    const vm = await boot(h);
    await h.engine.pause(vm.id);
    const e = await refused(h.engine.exec(execReq(vm.id, { key: 'key-exec-d' })));
    assert.equal(e.code, 'INVALID_STATE');
    await h.engine.resume(vm.id);
    const mark = h.plan.calls.length;
    await h.engine.exec(execReq(vm.id, { key: 'key-exec-d' }));
    assert.equal(runs(h, mark), 1);
  });
});

/** Records nobody reads: exec outcomes never reach them. */
const NO_RECORDS: RecordStore = {
  saveVm: async () => undefined,
  saveSnapshot: async () => undefined,
  saveRequest: async () => undefined,
  forgetRequest: async () => undefined,
  removeVm: async () => undefined,
  removeRuntime: async () => undefined,
  loadAll: async () => ({ vms: [], snaps: [], requests: [] }),
  sweep: async () => 0,
  exists: async () => false,
};

describe('exec outcomes are bounded in memory', () => {
  /** Requests on a clock the test moves, and an exec that counts its runs and returns `outBytes` of output. */
  function setup() {
    const clock = { now: 0 };
    const requests = new Requests(NO_RECORDS, silentLogger(), () => clock.now);
    const ran = new Map<string, number>();
    const run = (key: string, outBytes = 10): Promise<ExecResult> =>
      requests.exec(key, 'same', async (sent) => {
        sent();
        ran.set(key, (ran.get(key) ?? 0) + 1);
        return { exitCode: 0, stdout: 'x'.repeat(outBytes), stderr: '' };
      });
    return { clock, run, ran };
  }

  it('forgets an outcome past its age: a repeat then runs again', async () => {
    const { clock, run, ran } = setup();
    await run('key-age');
    clock.now += EXEC_MEMORY.maxAgeMs - 1;
    await run('key-age');
    assert.equal(ran.get('key-age'), 1, 'remembered within the age');
    clock.now += 2;
    await run('key-age');
    assert.equal(ran.get('key-age'), 2, 'forgotten past it');
  });

  it('forgets the oldest outcomes past the size bound, keeping the newest', async () => {
    const { run, ran } = setup();
    const big = Math.floor(EXEC_MEMORY.maxBytes / 2) + 1;
    await run('key-old', big);
    await run('key-new', big);
    await run('key-new', big);
    await run('key-old', big);
    assert.deepEqual(Object.fromEntries(ran), { 'key-old': 2, 'key-new': 1 });
  });
});

describe('records', () => {
  it('writes of one record at once all land, through temp names of their own', async () => {
    const dir = await fs.mkdtemp('/tmp/fk-rec-');
    try {
      const file = path.join(dir, 'vm.json');
      await Promise.all(Array.from({ length: 20 }, (_, i) => writeJsonAtomic(file, { i })));
      const { i } = JSON.parse(await fs.readFile(file, 'utf8')) as { i: number };
      assert.ok(i >= 0 && i < 20);
      assert.deepEqual(await fs.readdir(dir), ['vm.json'], 'no temp file is left');
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

reportDuration('engine exec by key');
