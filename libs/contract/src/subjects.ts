import { HostId, IdempotencyKey } from './ids.js';
import { GUEST_ENDPOINTS } from './guest.js';
import { EventKind } from './events.js';

/**
 * Subject layout. The version is part of the subject, so a v2 contract can run beside v1.
 *   forky.v1.host.<hostId>.<endpoint>   one hostd's endpoints
 *   forky.v1.events.<hostId>.<kind>    that host's VM and snapshot events (JSON, STREAMS.md "Events")
 */
export const SUBJECT_ROOT = 'forky.v1';

export const HOSTD_ENDPOINTS = [
  'host.info',
  'host.ping',
  'vm.boot',
  'vm.list',
  'vm.show',
  'vm.pause',
  'vm.resume',
  'vm.destroy',
  'vm.exec',
  'vm.app',
  'vm.network',
  'vm.extend',
  'snapshot.create',
  'snapshot.list',
  'snapshot.show',
  'snapshot.delete',
  'snapshot.publish',
  'snapshot.fetch',
  'fork',
  'fork.abandon',
  // The sandbox endpoints (STREAMS.md), routed by VM id like the VM requests.
  ...GUEST_ENDPOINTS,
] as const;
export type HostdEndpoint = (typeof HOSTD_ENDPOINTS)[number];

/** hostd endpoints the scheduler does not offer as such: it moves snapshots itself when placing. */
const HOST_ONLY = ['host.info', 'host.ping', 'snapshot.publish', 'snapshot.fetch', 'fork.abandon'] as const;
type HostOnly = (typeof HOST_ONLY)[number];

/** The scheduler's endpoints: every hostd endpoint but the host-only ones (placed or forwarded), plus its own. */
export const SCHED_ENDPOINTS = [
  'hosts',
  'batch',
  'snapshot.tree',
  'template.create',
  'template.list',
  'template.show',
  'template.delete',
  ...HOSTD_ENDPOINTS.filter((e): e is Exclude<HostdEndpoint, HostOnly> => !HOST_ONLY.includes(e as HostOnly)),
] as const;
export type SchedEndpoint = (typeof SCHED_ENDPOINTS)[number];

export const subjects = {
  sched: (endpoint: SchedEndpoint): string => `${SUBJECT_ROOT}.sched.${endpoint}`,
  /** A guest's spread self-fork (issue 22), asked by its host: only that host may publish here. */
  selfFork: (hostId: string): string => `${SUBJECT_ROOT}.sched.selffork.${HostId.parse(hostId)}`,
  /** Every host's self-fork subject (the scheduler serves them all; the last token names the host). */
  selfForks: `${SUBJECT_ROOT}.sched.selffork.*`,
  heartbeat: (hostId: string): string => `${SUBJECT_ROOT}.hb.${HostId.parse(hostId)}`,
  /** Every host's heartbeat. */
  heartbeats: `${SUBJECT_ROOT}.hb.*`,
  hostPrefix: (hostId: string): string => `${SUBJECT_ROOT}.host.${HostId.parse(hostId)}`,
  host: (hostId: string, endpoint: HostdEndpoint): string => `${subjects.hostPrefix(hostId)}.${endpoint}`,
  /** Jobs waiting for a scheduler (the work-queue stream's subjects). */
  job: (endpoint: SchedEndpoint): string => `${SUBJECT_ROOT}.jobs.${endpoint}`,
  jobs: `${SUBJECT_ROOT}.jobs.>`,
  /** A keyed job's own subject (in `jobs.>`): the stream holds at most one job of a key. */
  jobOfKey: (key: string): string => `${SUBJECT_ROOT}.jobs.key.${IdempotencyKey.parse(key)}`,
  /** A stream's messages from its host (STREAMS.md): only that host may publish here. */
  streamOut: (hostId: string, sid: string): string => `${SUBJECT_ROOT}.out.${HostId.parse(hostId)}.${streamToken(sid)}`,
  /** Every stream subject a host listens on for its clients' messages. */
  streamsOf: (hostId: string): string => `${subjects.hostPrefix(hostId)}.stream.>`,
  streamIn: (hostId: string, sid: string): string => `${subjects.hostPrefix(hostId)}.stream.${streamToken(sid)}.in`,
  streamCredit: (hostId: string, sid: string): string => `${subjects.hostPrefix(hostId)}.stream.${streamToken(sid)}.credit`,
  streamCancel: (hostId: string, sid: string): string => `${subjects.hostPrefix(hostId)}.stream.${streamToken(sid)}.cancel`,
  /** A host's VM and snapshot events (STREAMS.md "Events"): only that host may publish here. */
  event: (hostId: string, kind: EventKind): string => `${SUBJECT_ROOT}.events.${HostId.parse(hostId)}.${EventKind.parse(kind)}`,
  /** Every host's events, for `nats sub` and the SDK. */
  events: `${SUBJECT_ROOT}.events.>`,
} as const;

/** A stream id becomes a subject token: it must be one. */
function streamToken(sid: string): string {
  if (!/^[A-Za-z0-9]{22}$/.test(sid)) throw new Error(`not a stream id: ${JSON.stringify(sid).slice(0, 40)}`);
  return sid;
}

/**
 * JetStream streams besides the buckets.
 *   jobs  work queue of keyed scheduler requests; consumer `schedulers` is shared by every scheduler
 */
export const STREAMS = { jobs: 'FORKY_JOBS' } as const;
export const JOBS_CONSUMER = 'schedulers';

export const SERVICE_NAMES = { hostd: 'forky-hostd', scheduler: 'forky-scheduler' } as const;

/**
 * JetStream KV buckets: state that outlives any process. Names use `_` (nats-server 2.9 bucket names).
 *   hosts    key <hostId>            -> Heartbeat
 *   locator  key vm.<id> | snap.<id> -> { host }
 *   requests key <idempotency key>   -> the request's progress and its reply
 *   lineage  key <snapshotId>        -> LineageNode
 *   templates key <name>             -> TemplateInfo; key retired.<snapshotId> -> RetiredTemplate (written by schedulers only)
 */
export const BUCKETS = {
  hosts: 'forky_hosts',
  locator: 'forky_locator',
  requests: 'forky_requests',
  lineage: 'forky_lineage',
  templates: 'forky_templates',
} as const;
