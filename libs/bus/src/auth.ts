import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ForkyError } from '@forky/base';
import { BUCKETS, HostId, STREAMS, SUBJECT_ROOT, subjects } from '@forky/contract';

/** A NATS user and password, as kept in a 0600 file (`nats.authFile`). */
export const Credentials = z.strictObject({ user: z.string().min(1), pass: z.string().min(1) });
export type Credentials = z.infer<typeof Credentials>;

/** Who may connect to a cluster: one operator (CLI, `nats` CLI), schedulers, one user per host. */
export interface ClusterAuth {
  operator: Credentials;
  scheduler: Credentials;
  hosts: Record<string, Credentials>;
}

interface Permissions {
  publish: { allow: string[]; deny?: string[] };
  subscribe: { allow: string[]; deny?: string[] };
  allow_responses?: boolean;
}

/**
 * Each user gets its own inbox prefix and may subscribe only there, so no one reads replies
 * meant for another (the default `_INBOX.>` would let any user see every reply).
 */
export const inboxPrefixOf = (user: string): string => `_INBOX_${user.replace(/[^A-Za-z0-9_-]/g, '_')}`;

export const hostUser = (hostId: string): string => `hostd-${HostId.parse(hostId)}`;

export function newCredentials(user: string): Credentials {
  return { user, pass: randomBytes(24).toString('base64url') };
}

export function newClusterAuth(hostIds: readonly string[]): ClusterAuth {
  return {
    operator: newCredentials('operator'),
    scheduler: newCredentials('scheduler'),
    hosts: Object.fromEntries(hostIds.map((h) => [h, newCredentials(hostUser(h))])),
  };
}

/** JetStream API calls nobody but the operator makes: dropping or rewriting the cluster's state. */
const JS_ADMIN_ONLY = [
  '$JS.API.STREAM.DELETE.>',
  '$JS.API.STREAM.UPDATE.>',
  '$JS.API.STREAM.MSG.DELETE.>',
  ...Object.values(BUCKETS).map((b) => `$JS.API.STREAM.PURGE.KV_${b}`),
];
/** The scheduler's job queue: hosts may not read, take, ack or inspect jobs. */
const JOBS_API = [
  `$JS.API.STREAM.*.${STREAMS.jobs}`,
  `$JS.API.CONSUMER.*.${STREAMS.jobs}`,
  `$JS.API.CONSUMER.*.${STREAMS.jobs}.>`,
  `$JS.API.CONSUMER.*.*.${STREAMS.jobs}.>`,
  `$JS.ACK.${STREAMS.jobs}.>`,
];
/** What every service needs to use KV and the object store (requests, acks, flow control). */
const JS_CLIENT = ['$JS.API.>', '$JS.ACK.>', '$JS.FC.>'];

/**
 * A host serves only its own subjects and reports only its own heartbeat. It writes the locator
 * and lineage (its VMs and snapshots) and snapshot parts, and asks the scheduler for a fork (a
 * guest's spread self-fork); it cannot write another host's heartbeat or the scheduler's requests
 * bucket, nor call another host directly.
 */
export function hostPermissions(hostId: string): Permissions {
  return {
    publish: {
      allow: [
        subjects.heartbeat(hostId),
        // Its streams' messages to clients (STREAMS.md): its own `out` subjects only.
        `${SUBJECT_ROOT}.out.${HostId.parse(hostId)}.>`,
        // Its VMs' and snapshots' events (STREAMS.md "Events"): never another host's.
        `${SUBJECT_ROOT}.events.${HostId.parse(hostId)}.>`,
        `$KV.${BUCKETS.hosts}.${HostId.parse(hostId)}`,
        `$KV.${BUCKETS.locator}.>`,
        `$KV.${BUCKETS.lineage}.>`,
        '$O.forky_parts.>',
        // A guest's `forky-fork --spread` (issue 22): on its own subject only, and the scheduler
        // checks the source is on this host and takes nothing but what a self-fork needs.
        subjects.selfFork(hostId),
        ...JS_CLIENT,
      ],
      // Deleting a part purges its chunks: OBJ_forky_parts may be purged, the KV streams not.
      deny: [...JS_ADMIN_ONLY, ...JOBS_API],
    },
    subscribe: { allow: [`${subjects.hostPrefix(hostId)}.>`, '$SRV.>', `${inboxPrefixOf(hostUser(hostId))}.>`] },
    allow_responses: true,
  };
}

/** The scheduler calls every host, queues and takes jobs, and serves its own endpoints; it reports no heartbeat. */
export function schedulerPermissions(user = 'scheduler'): Permissions {
  return {
    publish: {
      allow: [`${SUBJECT_ROOT}.host.>`, subjects.jobs, `$KV.${BUCKETS.requests}.>`, `$KV.${BUCKETS.templates}.>`, ...JS_CLIENT],
      deny: JS_ADMIN_ONLY,
    },
    subscribe: { allow: [`${SUBJECT_ROOT}.sched.>`, subjects.heartbeats, '$SRV.>', `${inboxPrefixOf(user)}.>`] },
    allow_responses: true,
  };
}

/** The `authorization` block of a nats-server config (nats-server reads JSON). */
export function authorizationConfig(auth: ClusterAuth): Record<string, unknown> {
  const user = (c: Credentials, permissions?: Permissions): Record<string, unknown> => ({
    user: c.user,
    password: c.pass,
    ...(permissions ? { permissions } : {}),
  });
  return {
    authorization: {
      users: [
        user(auth.operator),
        user(auth.scheduler, schedulerPermissions(auth.scheduler.user)),
        ...Object.entries(auth.hosts).map(([h, c]) => user(c, hostPermissions(h))),
      ],
    },
  };
}

/** Writes credentials readable by their owner only. */
export async function writeCredentials(file: string, c: Credentials): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await fs.writeFile(file, JSON.stringify(c), { mode: 0o600 });
}

export async function readCredentials(file: string): Promise<Credentials> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new ForkyError('BAD_REQUEST', `cannot read NATS credentials ${file}: ${(e as Error).message}`, {
      cause: e,
      details: { field: 'nats.authFile' },
    });
  }
  let parsed: z.ZodSafeParseResult<Credentials> | undefined;
  try {
    parsed = Credentials.safeParse(JSON.parse(text));
  } catch {
    parsed = undefined;
  }
  if (!parsed?.success)
    throw new ForkyError('BAD_REQUEST', `NATS credentials ${file} are not {"user", "pass"}`, { details: { field: 'nats.authFile' } });
  return parsed.data;
}
