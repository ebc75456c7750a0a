import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { withDeadline } from '@forky/base';
import { openStream } from '@forky/bus';
import { subjects } from '@forky/contract';
import type { NatsConnection } from '@nats-io/nats-core';
import { CLI } from './cli-run.js';

/** A `forky port` process and what it said. */
export interface Forwarder {
  child: ChildProcess;
  /** Where it listens. */
  port: number;
  /** The line it printed first (JSON with --json). */
  line: string;
  stderr: () => string;
  /** Resolves with the exit code (128+N by signal N). */
  exited: Promise<number>;
}

/** Runs `forky --server URL port VM GUESTPORT --local 127.0.0.1:0` and waits (within 60 s) for its listening line. */
export async function startForwarder(server: string, data: string, vm: string, guestPort: number, json = true): Promise<Forwarder> {
  const args = [CLI, '--server', server, ...(json ? ['--json'] : []), 'port', vm, String(guestPort), '--local', '127.0.0.1:0'];
  const child = spawn(process.execPath, args, { env: { ...process.env, FORKY_DATA: data }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number>((resolve) =>
    child.on('exit', (code, sig) => resolve(code ?? 128 + ((sig && os.constants.signals[sig]) || 0))),
  );
  const line = await withDeadline(
    new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout?.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
      });
      void exited.then((code) => reject(new Error(`forky port exited ${code} before listening: ${err}`)));
    }),
    60_000,
    'forky port listening',
  );
  const port = json ? (JSON.parse(line) as { port: number }).port : Number(/:(\d+) ->/.exec(line)?.[1]);
  return { child, port, line, stderr: () => err, exited };
}

/** One GET: status, sha256 of the body and its size. */
export function get(port: number, path: string, agent?: http.Agent): Promise<{ status: number; sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, ...(agent ? { agent } : {}) }, (res) => {
      const h = createHash('sha256');
      let bytes = 0;
      res.on('data', (b: Buffer) => {
        h.update(b);
        bytes += b.length;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, sha256: h.digest('hex'), bytes }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(300_000, () => req.destroy(new Error(`GET ${path}: no answer within 300 s`)));
  });
}

/**
 * Starts a detached process in the guest through the agent's exec API (`exec.start`, `detach`),
 * through the scheduler: the way a user starts a server there.
 */
export async function startDetached(nc: NatsConnection, vm: string, shell: string): Promise<number> {
  const st = await openStream(nc, subjects.sched('exec.start'), { id: vm, shell, detach: true });
  st.close();
  if (!st.pid) throw new Error(`no pid for the detached ${shell}`);
  return st.pid;
}

/** Sets up `/srv/big` (`mib` MiB of random bytes) and busybox httpd on `port` in the guest; gives the file's sha256. */
export async function startGuestWeb(
  nc: NatsConnection,
  exec: (vm: string, script: string) => Promise<string>,
  vm: string,
  port: number,
  mib: number,
): Promise<string> {
  const out = await exec(
    vm,
    `mkdir -p /srv && dd if=/dev/urandom of=/srv/big bs=1M count=${mib} 2>/dev/null && echo small > /srv/small && sha256sum /srv/big`,
  );
  await startDetached(nc, vm, `exec httpd -f -p ${port} -h /srv`);
  return out.trim().split(/\s+/)[0] as string;
}

/** Waits (polling, within `ms`) until a GET through the forward answers 200: the guest's server is up. */
export async function untilServes(port: number, path: string, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const r = await get(port, path).catch((e: unknown) => e as Error);
    if (!(r instanceof Error) && r.status === 200) return;
    if (Date.now() - t0 > ms)
      throw new Error(`GET ${path} through the forward: not 200 within ${ms} ms (${String(r instanceof Error ? r.message : r.status)})`);
    await new Promise((resolve) => setTimeout(resolve, 200)); // a poll, bounded above: the server starting in the guest
  }
}

/** What an HTTP request through the gateway got: status, headers, the body's sha256 and size, and whether its socket was reused. */
export interface HostGet {
  status: number;
  headers: http.IncomingHttpHeaders;
  sha256: string;
  bytes: number;
  body: string;
  reused: boolean;
}

/** A request to 127.0.0.1:`port` with the given Host header (how a browser asks for `<vm>-<port>.localhost`). */
export function getHost(
  port: number,
  host: string,
  path: string,
  o: { headers?: Record<string, string>; agent?: http.Agent; method?: string } = {},
): Promise<HostGet> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: { Host: host, ...o.headers }, agent: o.agent ?? false },
      (res) => {
        const h = createHash('sha256');
        const parts: Buffer[] = [];
        let bytes = 0;
        res.on('data', (b: Buffer) => {
          h.update(b);
          bytes += b.length;
          if (bytes <= 4096) parts.push(b);
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            sha256: h.digest('hex'),
            bytes,
            body: Buffer.concat(parts).toString(),
            reused: req.reusedSocket,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(120_000, () => req.destroy(new Error(`GET ${host}${path}: no answer within 120 s`)));
    req.end();
  });
}

/**
 * Sends `bytes` on a raw TCP connection to 127.0.0.1:`port` and gathers what comes back until the peer
 * closes or `want` bytes came (then it closes); within `ms`.
 */
export function rawExchange(port: number, bytes: Uint8Array, want = Infinity, ms = 30_000): Promise<Buffer> {
  return withDeadline(
    new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      let got = 0;
      const c = net.connect(port, '127.0.0.1', () => c.write(bytes));
      c.on('data', (b: Buffer) => {
        parts.push(b);
        if ((got += b.length) >= want) c.destroy();
      });
      c.on('close', () => resolve(Buffer.concat(parts)));
      c.on('error', (e) => (got > 0 ? undefined : reject(e)));
    }),
    ms,
    'a raw exchange',
  );
}
