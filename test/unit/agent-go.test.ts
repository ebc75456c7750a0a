import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AGENT_SRC } from '../helpers/agent-binary.js';

// The agent's own Go tests (frame resync and CRC, the output ring, a session over a pipe), so CI
// runs them with the rest: they fail here when they fail there.
describe('forky-agent: its Go tests', () => {
  it('go test passes', { timeout: 120_000 }, async () => {
    const cache = process.env.FORKY_GO_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'forky-go');
    const r = await promisify(execFile)('go', ['test', '-count=1', './...'], {
      cwd: AGENT_SRC,
      env: { ...process.env, GOCACHE: cache, GOPATH: path.join(cache, 'gopath'), GOFLAGS: '-trimpath', GOPROXY: 'off', CGO_ENABLED: '0' },
      maxBuffer: 16 << 20,
    });
    assert.match(r.stdout, /^ok\s/m, r.stdout + r.stderr);
  });
});
