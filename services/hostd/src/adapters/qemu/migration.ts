import fs from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ForkyError, withDeadline } from '@forky/base';
import type { QmpClient, QmpEvent } from '@forky/qemu';

/*
 * Device state travels over a unix socket that hostd serves, not `exec:` (which spawns a shell
 * inside QEMU and so cannot work under `-sandbox spawn=deny`). RAM is not in the stream: it lives
 * in a shared memory-backend file and `x-ignore-shared` skips it (qemu-fork-facts.md).
 */

const done = (e: QmpEvent): boolean => ['completed', 'failed', 'cancelled'].includes(String(e.data?.status));

export async function enableFastMigration(qmp: QmpClient): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'x-ignore-shared', state: true },
      { capability: 'events', state: true },
    ],
  });
}

/** Saves the (stopped) VM's device state to `file`, written under a temporary name first. */
export async function saveState(qmp: QmpClient, socketPath: string, file: string, timeoutMs: number): Promise<number> {
  await fs.rm(socketPath, { force: true });
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.partial`;
  const server = net.createServer();
  const received = new Promise<void>((resolve, reject) => {
    server.once('connection', (sock) => {
      pipeline(sock, createWriteStream(tmp)).then(resolve, reject);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  try {
    await enableFastMigration(qmp);
    // The default bandwidth cap (128 MiB/s) throttles even a stopped VM.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    const finished = qmp.waitForEvent('MIGRATION', done, timeoutMs);
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    const ev = await finished;
    if (ev.data?.status !== 'completed') throw await migrationError(qmp, 'saving device state', ev);
    await withDeadline(received, timeoutMs, 'device state write');
    await fs.rename(tmp, file);
    return (await fs.stat(file)).size;
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  } finally {
    server.close();
    await fs.rm(socketPath, { force: true });
  }
}

/** Feeds `file` into a QEMU started with `-incoming defer` and waits until it has loaded. */
export async function loadState(qmp: QmpClient, socketPath: string, file: string, timeoutMs: number): Promise<void> {
  await fs.rm(socketPath, { force: true });
  await enableFastMigration(qmp);
  const finished = qmp.waitForEvent('MIGRATION', done, timeoutMs);
  // QEMU listens on the socket by the time migrate-incoming returns.
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
  const sock = net.createConnection(socketPath);
  try {
    // QEMU closes its end as soon as it has read the end of the stream, which can race our own
    // end of writing ("Premature close"): the MIGRATION event, not the pipe, says whether it loaded.
    const sent = pipeline(createReadStream(file), sock).then(
      () => undefined,
      (e: unknown) => e,
    );
    const ev = await finished;
    if (ev.data?.status !== 'completed') {
      const sendError = await withDeadline(sent, 1000, 'state send').catch(() => undefined);
      const err = await migrationError(qmp, 'loading device state', ev);
      throw sendError ? new ForkyError('QEMU', `${err.message} (sending: ${(sendError as Error).message})`, { cause: sendError }) : err;
    }
  } finally {
    sock.destroy();
    await fs.rm(socketPath, { force: true });
  }
}

async function migrationError(qmp: QmpClient, what: string, ev: QmpEvent): Promise<ForkyError> {
  const info = await qmp.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({}) as { 'error-desc'?: string });
  return new ForkyError('QEMU', `${what} ${String(ev.data?.status)}: ${info['error-desc'] ?? 'QEMU gave no reason'}`);
}
