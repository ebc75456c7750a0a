import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO } from '../helpers/repo.js';

const CLI = path.join(REPO, 'services', 'cli', 'dist', 'main.js');

describe('the CLI whose reader went away (`forky status | head -1`)', () => {
  it('stops quietly: exit 0, no stack on stderr', async () => {
    const data = await fs.mkdtemp(path.join(os.tmpdir(), 'forky-epipe-'));
    try {
      const child = spawn(process.execPath, [CLI, 'status'], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, FORKY_DATA: data },
      });
      // Closed before the CLI has started: its first write meets a pipe with no reader.
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the CLI did not exit within 20 s')), 20_000);
        child.on('exit', (c) => (clearTimeout(t), resolve(c)));
      });
      assert.equal(stderr, '');
      assert.equal(code, 0);
    } finally {
      await fs.rm(data, { recursive: true, force: true });
    }
  });
});
