import fs from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ForkyError } from '@forky/base';
import { hostUser, newClusterAuth, newCredentials, writeCredentials, type ClusterAuth } from '@forky/bus';

/** Where `forky up` keeps a local cluster's secrets: `<data>/auth`, 0700. */
export interface LocalAuth {
  dir: string;
  /** The users and their permissions, for the nats-server config (see local-nats.ts). */
  users: ClusterAuth;
  /** The server's certificate and key, when TLS is on. */
  tls?: { certFile: string; keyFile: string };
  operatorFile: string;
  schedulerFile: string;
  hostFile(host: string): string;
  /** The server's self-signed certificate, which clients trust, when TLS is on. */
  caFile?: string;
}

const ALL = 'cluster-auth.json';

/**
 * Makes (or extends, keeping what exists) the users of a local cluster: an operator for the CLI,
 * the scheduler, one user per host. Returns whether users or certificate changed (a running
 * nats-server must reload its config).
 */
export async function prepareLocalAuth(
  data: string,
  hosts: readonly string[],
  tls: boolean,
): Promise<{ auth: LocalAuth; changed: boolean }> {
  const dir = path.join(data, 'auth');
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  const all = path.join(dir, ALL);
  let current: ClusterAuth | undefined;
  try {
    current = JSON.parse(await fs.readFile(all, 'utf8')) as ClusterAuth;
  } catch {
    current = undefined;
  }
  const next: ClusterAuth = current ?? newClusterAuth([]);
  let changed = !current;
  for (const h of hosts) {
    if (next.hosts[h]) continue;
    next.hosts[h] = newCredentials(hostUser(h));
    changed = true;
  }
  const keyFile = path.join(dir, 'server-key.pem');
  const certFile = path.join(dir, 'server-cert.pem');
  const auth: LocalAuth = {
    dir,
    users: next,
    ...(tls ? { tls: { certFile, keyFile } } : {}),
    operatorFile: path.join(dir, 'operator.json'),
    schedulerFile: path.join(dir, 'scheduler.json'),
    hostFile: (h) => path.join(dir, `${hostUser(h)}.json`),
    ...(tls ? { caFile: certFile } : {}),
  };
  if (auth.caFile && !(await exists(auth.caFile))) {
    await selfSignedCert(auth.caFile, keyFile);
    changed = true;
  }
  if (changed || !(await exists(auth.operatorFile))) {
    await fs.writeFile(all, JSON.stringify(next), { mode: 0o600 });
    await writeCredentials(auth.operatorFile, next.operator);
    await writeCredentials(auth.schedulerFile, next.scheduler);
    for (const [h, c] of Object.entries(next.hosts)) await writeCredentials(auth.hostFile(h), c);
    changed = true;
  }
  return { auth, changed };
}

/** A P-256 certificate for 127.0.0.1 and localhost, valid a year (openssl, from Debian's base). */
async function selfSignedCert(certFile: string, keyFile: string): Promise<void> {
  try {
    await promisify(execFile)('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '365',
      '-subj',
      '/CN=forky-local-nats',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ]);
    await fs.chmod(keyFile, 0o600);
  } catch (e) {
    throw new ForkyError('UNAVAILABLE', `cannot make a TLS certificate with openssl: ${(e as Error).message}`, { cause: e });
  }
}

const exists = (f: string): Promise<boolean> =>
  fs.access(f).then(
    () => true,
    () => false,
  );
