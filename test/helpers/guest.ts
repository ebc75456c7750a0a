import assert from 'node:assert/strict';
import type { ExecResult } from '@forky/contract';

/** A shell in guests, through whichever client runs `vm.exec`: the script must exit 0; gives its stdout. */
export function guestShell(exec: (id: string, cmd: string[]) => Promise<ExecResult>): (id: string, script: string) => Promise<string> {
  return async (id, script) => {
    const r = await exec(id, ['/bin/sh', '-c', script]);
    assert.equal(r.exitCode, 0, `exit ${r.exitCode} in ${id}: ${r.stderr}`);
    return r.stdout;
  };
}
