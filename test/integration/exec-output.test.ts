import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { HostdClient, startNatsServer, type NatsServer } from '@forky/bus';
import { qemuPidsWhere } from '../helpers/procs.js';
import { refused } from '../helpers/errors.js';
import { ensureImageOnce } from '../helpers/repo.js';
import { HOSTD_MAIN, answersHostInfo, hostdEnv, spawnService, type ServiceProc } from '../helpers/service-proc.js';

const HOST = 'exec-out-h1';

/** A process's resident memory, from /proc. */
async function rssMiB(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  return Math.round(Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) / 1024);
}

describe('exec output larger than a reply can carry, on a real guest', { timeout: 600_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let client: HostdClient;
  let dir: string;
  let hostd: ServiceProc | undefined;
  const ramDir = (): string => path.join('/dev/shm', path.basename(dir));

  before(async () => {
    await ensureImageOnce();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-execout-'));
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    client = new HostdClient(nc, HOST, { timeoutMs: 180_000 });
    hostd = await spawnService(
      HOSTD_MAIN,
      { ...hostdEnv({ hostId: HOST, natsUrl: nats.url, dataDir: path.join(dir, 'data'), ramDir: ramDir() }), FORKY_LOG_LEVEL: 'warn' },
      path.join(dir, 'hostd.log'),
      answersHostInfo(client),
    );
  });
  after(async () => {
    await hostd?.kill().catch(() => undefined);
    for (const pid of await qemuPidsWhere((cmd) => cmd.includes(dir))) process.kill(pid, 'SIGKILL');
    await nc?.close();
    await nats?.stop();
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(ramDir(), { recursive: true, force: true });
  });

  it('fails 50 MB outputs with CAPACITY naming the limit, keeps hostd RSS flat, and the next exec works', async (t) => {
    const vm = await client.call('vm.boot', {});
    const pid = hostd?.child.pid as number;
    // Up to the limit, output comes back whole.
    const half = await client.call('vm.exec', { id: vm.id, cmd: ['head', '-c', '524288', '/dev/zero'] });
    assert.equal(half.stdout.length, 524288);
    const before = await rssMiB(pid);
    const after: number[] = [];
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const e = await refused(client.call('vm.exec', { id: vm.id, cmd: ['head', '-c', '50000000', '/dev/zero'], timeoutMs: 120_000 }));
      times.push(Math.round(performance.now() - t0));
      assert.equal(e.code, 'CAPACITY', e.message);
      assert.match(e.message, /exceeds \d+ bytes/);
      after.push(await rssMiB(pid));
      assert.equal((await client.call('vm.exec', { id: vm.id, cmd: ['echo', 'still here'] })).stdout, 'still here\n');
    }
    // Over what a reply carries but under the line bound: refused as well, not a failed reply.
    const mid = await refused(client.call('vm.exec', { id: vm.id, cmd: ['head', '-c', '1200000', '/dev/zero'] }));
    assert.equal(mid.code, 'CAPACITY', mid.message);
    const growth = Math.max(...after) - before;
    t.diagnostic(
      `hostd RSS: before ${before} MiB, after each 50 MB exec ${after.join(', ')} MiB (growth ${growth} MiB); exec times ${times.join(', ')} ms; 1.2 MB: ${mid.message}`,
    );
    assert.ok(growth < 30, `hostd RSS grew by ${growth} MiB over three 50 MB execs`);
    await client.call('vm.destroy', { id: vm.id });
  });
});
