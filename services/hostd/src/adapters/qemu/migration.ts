import fs from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { ForkyError, withDeadline } from '@forky/base';
import type { QmpClient, QmpEvent } from '@forky/qemu';

/*
 * Device state is fed over a unix socket that hostd serves, not `exec:` (which spawns a shell
 * inside QEMU and so cannot work under `-sandbox spawn=deny`). The stream holds no RAM: that
 * lives in the snapshot's RAM file, which the new process maps copy-on-write.
 */

const done = (e: QmpEvent): boolean => ['completed', 'failed', 'cancelled'].includes(String(e.data?.status));

/**
 * Makes a QEMU started with `-incoming defer` listen for state on `socketPath`. Done when the
 * process is prepared, so loading later is one connection and no QMP round trip.
 */
export async function listenForState(qmp: QmpClient, socketPath: string): Promise<void> {
  await fs.rm(socketPath, { force: true });
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  // QEMU listens on the socket by the time migrate-incoming returns.
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
}

/** Feeds `file` to a QEMU listening for state and waits until it has loaded (and, if it autostarts, runs). */
export async function loadState(qmp: QmpClient, socketPath: string, file: string, timeoutMs: number): Promise<void> {
  const finished = qmp.waitForEvent('MIGRATION', done, timeoutMs);
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
