import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { askLine } from '@forky/hostd/internal';

/** The host's side of a VM's control port (forky-ident): the guest's answer is bounded. */
describe('guest control answers', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-ctl-'));
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  /** A fake guest on a unix socket that answers every request with `reply`. */
  const guest = async (name: string, reply: (s: net.Socket) => void): Promise<{ sock: string; close(): Promise<void> }> => {
    const sock = path.join(dir, name);
    const server = net.createServer((c) => {
      c.on('error', () => undefined);
      c.once('data', () => reply(c));
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    return { sock, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  };

  it('resolves with the first line', async () => {
    const g = await guest('ok.sock', (c) => c.write('ok\nmore\n'));
    try {
      assert.equal(await askLine(g.sock, 'id host mac seed 1 2', 2000), 'ok');
    } finally {
      await g.close();
    }
  });

  it('refuses a guest that sends more than 4 KiB without a newline, at once and without buffering more', async () => {
    const g = await guest('flood.sock', (c) => {
      const chunk = Buffer.alloc(64 * 1024, 0x41);
      const pump = (): void => {
        while (!c.destroyed && c.write(chunk));
        if (!c.destroyed) c.once('drain', pump);
      };
      pump();
    });
    try {
      const t0 = Date.now();
      await assert.rejects(
        askLine(g.sock, 'x', 10_000),
        (e: Error & { code?: string }) => e.code === 'QEMU' && /4096 bytes/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 5000, 'refused as soon as the bound was passed, not at the deadline');
    } finally {
      await g.close();
    }
  });
});
