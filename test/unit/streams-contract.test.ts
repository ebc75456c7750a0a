import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ForkyError } from '@forky/base';
import {
  ENDPOINT_KINDS,
  ExecStartRequest,
  FileReadRequest,
  FileRenameRequest,
  FileWriteRequest,
  GUEST_ENDPOINTS,
  HOSTD_ENDPOINTS,
  ProcSignalRequest,
  SCHED_ENDPOINTS,
  StreamRef,
  hostdContract,
  parseOrThrow,
  schedContract,
  subjects,
} from '@forky/contract';

const VM = 'vm-abcdefghijkm';
const SID = 'AbCdEfGhIjKlMnOpQrStUv';

/** The field a refusal names, and its message. */
function refusal(schema: Parameters<typeof parseOrThrow>[0], body: unknown): { field: string; message: string } {
  try {
    parseOrThrow(schema, body, 'request');
  } catch (e) {
    assert.ok(e instanceof ForkyError);
    assert.equal(e.code, 'BAD_REQUEST');
    return { field: String(e.details?.field), message: e.message };
  }
  assert.fail(`accepted ${JSON.stringify(body).slice(0, 100)}`);
}

describe('stream contract', () => {
  it('takes a plain exec and fills its defaults', () => {
    const r = ExecStartRequest.parse({ id: VM, cmd: ['ls', '-l'] });
    assert.deepEqual(r, { id: VM, cmd: ['ls', '-l'], env: {}, stdin: false, timeoutMs: 0, detach: false });
    assert.equal(ExecStartRequest.parse({ id: VM, shell: 'echo hi | wc -c' }).shell, 'echo hi | wc -c');
  });

  it('refuses bad exec fields, naming the field', () => {
    const cases: Array<[unknown, string, RegExp]> = [
      [{ id: VM }, 'cmd', /exactly one of cmd/],
      [{ id: VM, cmd: ['a'], shell: 'b' }, 'cmd', /exactly one/],
      [{ id: VM, cmd: [] }, 'cmd', /./],
      [{ id: VM, cmd: ['a\0b'] }, 'cmd.0', /NUL/],
      [{ id: VM, cmd: Array(257).fill('a') }, 'cmd', /./],
      [{ id: VM, cmd: ['a'], cwd: 'relative/dir' }, 'cwd', /absolute/],
      [{ id: VM, cmd: ['a'], cwd: `/${'a'.repeat(4096)}` }, 'cwd', /./],
      [{ id: VM, cmd: ['a'], env: { 'A=B': 'x' } }, 'env."A=B"', /key/],
      [{ id: VM, cmd: ['a'], env: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`V${i}`, 'x'])) }, 'env', /256/],
      [{ id: VM, cmd: ['a'], timeoutMs: 86_400_001 }, 'timeoutMs', /./],
      [{ id: VM, cmd: ['a'], pty: { rows: 0, cols: 80 } }, 'pty.rows', /./],
      [{ id: VM, cmd: ['a'], window: 1024 }, 'window', /./],
      [{ id: VM, cmd: ['a'], detach: true, stdin: true }, 'stdin', /detached/],
      [{ id: VM, cmd: ['a'], user: 'root; rm' }, 'user', /user name/],
      [{ id: VM, cmd: ['a'], key: 'short' }, 'key', /./],
      [{ id: VM, cmd: ['a'], extra: 1 }, '(body)', /unknown key "extra"/],
      [{ id: 'vm-../../x', cmd: ['a'] }, 'id', /vm-/],
    ];
    for (const [body, field, message] of cases) {
      const r = refusal(ExecStartRequest, body);
      assert.equal(r.field, field, `${JSON.stringify(body).slice(0, 80)}: ${r.message}`);
      assert.match(r.message, message);
    }
  });

  it('refuses an exec too big for one guest frame, naming the field', () => {
    const big = 'x'.repeat(40 << 10);
    const cases: Array<[unknown, string]> = [
      [{ id: VM, cmd: Array(256).fill('a'.repeat(300)) }, 'cmd'],
      [{ id: VM, shell: 'y'.repeat(61 << 10) }, 'shell'],
      [{ id: VM, cmd: ['a'], env: Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`V${i}`, 'e'.repeat(1000)])) }, 'env'],
      [{ id: VM, cmd: [big], env: { A: 'e'.repeat(30 << 10) } }, 'cmd'],
      // Counted in bytes: 21 K characters of CJK are 63 KiB.
      [{ id: VM, cmd: ['echo', '文'.repeat(21 << 10)] }, 'cmd'],
    ];
    for (const [body, field] of cases) {
      const r = refusal(ExecStartRequest, body);
      assert.equal(r.field, field, r.message);
      assert.match(r.message, /60 KiB/);
    }
    assert.ok(ExecStartRequest.safeParse({ id: VM, cmd: [big], env: { A: 'e'.repeat(15 << 10) } }).success, 'just under fits');
  });

  it('refuses bad file and process fields', () => {
    assert.equal(refusal(FileReadRequest, { id: VM, path: '/a\0b' }).field, 'path');
    assert.equal(refusal(FileReadRequest, { id: VM, path: '/a', offset: -1 }).field, 'offset');
    assert.equal(refusal(FileWriteRequest, { id: VM, path: '/a', mode: 'overwrite' }).field, 'mode');
    assert.equal(refusal(FileWriteRequest, { id: VM, path: '/a', perm: 0o10000 }).field, 'perm');
    assert.equal(refusal(FileRenameRequest, { id: VM, from: '/a', to: 'b' }).field, 'to');
    assert.equal(refusal(ProcSignalRequest, { id: VM, pid: 0, signal: 'TERM' }).field, 'pid');
    assert.equal(refusal(ProcSignalRequest, { id: VM, pid: 3, signal: 'SEGV' }).field, 'signal');
  });

  it('lists every sandbox endpoint for hostd and the scheduler, with its kind', () => {
    for (const e of GUEST_ENDPOINTS) {
      assert.ok((HOSTD_ENDPOINTS as readonly string[]).includes(e), e);
      assert.ok((SCHED_ENDPOINTS as readonly string[]).includes(e), e);
      assert.ok(hostdContract[e] && schedContract[e], e);
      assert.ok(ENDPOINT_KINDS[e], e);
    }
    assert.equal(ENDPOINT_KINDS['exec.start'], 'write');
    assert.equal(ENDPOINT_KINDS['file.read'], 'read');
  });

  it('builds stream subjects and refuses a sid that is not one token', () => {
    assert.equal(subjects.streamOut('h1', SID), `forky.v1.out.h1.${SID}`);
    assert.equal(subjects.streamIn('h1', SID), `forky.v1.host.h1.stream.${SID}.in`);
    assert.equal(subjects.streamCredit('h1', SID), `forky.v1.host.h1.stream.${SID}.credit`);
    assert.equal(subjects.streamCancel('h1', SID), `forky.v1.host.h1.stream.${SID}.cancel`);
    assert.throws(() => subjects.streamOut('h1', 'a.b.>'));
    assert.throws(() => subjects.streamOut('H1', SID));
    assert.equal(StreamRef.safeParse({ sid: 'short', host: 'h1', out: '', in: '', credit: '', cancel: '' }).success, false);
  });
});
