import type { z } from 'zod';
import { HostInfo, HostPing, Empty } from './host.js';
import type { HostdEndpoint, SchedEndpoint } from './subjects.js';
import { BootRequest, ExecRequest, ExecResult, VmAppRequest, VmInfo, VmList, VmListRequest, VmRef } from './vm.js';
import {
  ForkRequest,
  ForkResult,
  ForkAbandonRequest,
  ForkAbandonResult,
  SnapshotCreateRequest,
  SnapshotInfo,
  SnapshotDeleteRequest,
  SnapshotDeleteResult,
  SnapshotList,
  SnapshotListRequest,
  SnapshotRef,
  TransferResult,
} from './snapshot.js';
import { guestContract } from './guest.js';
import { VmNetworkRequest } from './network.js';
import { VmExtendRequest } from './lifecycle.js';

/** Request and reply schema of every hostd endpoint: the one table both sides are checked against. */
export const hostdContract = {
  'host.info': { request: Empty, reply: HostInfo },
  /** Which hostd process answers: cheap, no engine work (the scheduler's liveness probe). */
  'host.ping': { request: Empty, reply: HostPing },
  'vm.boot': { request: BootRequest, reply: VmInfo },
  'vm.list': { request: VmListRequest, reply: VmList },
  'vm.show': { request: VmRef, reply: VmInfo },
  'vm.pause': { request: VmRef, reply: VmInfo },
  'vm.resume': { request: VmRef, reply: VmInfo },
  'vm.destroy': { request: VmRef, reply: VmInfo },
  'vm.exec': { request: ExecRequest, reply: ExecResult },
  'vm.app': { request: VmAppRequest, reply: VmInfo },
  'vm.network': { request: VmNetworkRequest, reply: VmInfo },
  'vm.extend': { request: VmExtendRequest, reply: VmInfo },
  'snapshot.create': { request: SnapshotCreateRequest, reply: SnapshotInfo },
  'snapshot.list': { request: SnapshotListRequest, reply: SnapshotList },
  'snapshot.show': { request: SnapshotRef, reply: SnapshotInfo },
  'snapshot.delete': { request: SnapshotDeleteRequest, reply: SnapshotDeleteResult },
  /** Puts the snapshot's parts that the object store lacks there, with its manifest. */
  'snapshot.publish': { request: SnapshotRef, reply: TransferResult },
  /** Brings a published snapshot to this host, fetching only the parts it lacks. */
  'snapshot.fetch': { request: SnapshotRef, reply: TransferResult },
  fork: { request: ForkRequest, reply: ForkResult },
  /** Undoes a keyed fork its caller gave up for good (the scheduler's, for a share it placed elsewhere). */
  'fork.abandon': { request: ForkAbandonRequest, reply: ForkAbandonResult },
  ...guestContract,
} as const satisfies Record<HostdEndpoint, { request: z.ZodType; reply: z.ZodType }>;

export type HostdContract = typeof hostdContract;
export type RequestOf<E extends HostdEndpoint> = z.input<HostdContract[E]['request']>;
export type ParsedRequestOf<E extends HostdEndpoint> = z.output<HostdContract[E]['request']>;
export type ReplyOf<E extends HostdEndpoint> = z.output<HostdContract[E]['reply']>;

/**
 * What each endpoint does to the cluster, for clients deciding whether a lost reply may be asked
 * again: a `read` changes nothing, so it may be re-sent; a `write` may be re-sent only under an
 * idempotency key the receiver dedupes. Every hostd and scheduler endpoint is listed.
 */
export const ENDPOINT_KINDS = {
  'host.info': 'read',
  'host.ping': 'read',
  hosts: 'read',
  'vm.list': 'read',
  'vm.show': 'read',
  'snapshot.list': 'read',
  'snapshot.show': 'read',
  'snapshot.tree': 'read',
  'template.list': 'read',
  'template.show': 'read',
  'vm.boot': 'write',
  'vm.pause': 'write',
  'vm.resume': 'write',
  'vm.destroy': 'write',
  'vm.exec': 'write',
  'vm.app': 'write',
  'vm.network': 'write',
  // Sets the deadline from now: a re-send moves it by the reply's delay, never does anything else.
  'vm.extend': 'write',
  'snapshot.create': 'write',
  'snapshot.delete': 'write',
  'snapshot.publish': 'write',
  'snapshot.fetch': 'write',
  fork: 'write',
  // The same key again finds nothing more to undo.
  'fork.abandon': 'write',
  batch: 'write',
  'template.create': 'write',
  // Sent once (no key): a repeat after the first removed it is NOT_FOUND, never a second removal.
  'template.delete': 'write',
  // A stream open that asked again opens a second stream (the first is cancelled when idle): only a keyed one is a write.
  'exec.start': 'write',
  'file.write': 'write',
  'proc.attach': 'read',
  'file.read': 'read',
  'file.watch': 'read',
  // Keyed like exec.start: each open makes a connection in the guest.
  'port.open': 'write',
  'proc.list': 'read',
  'file.list': 'read',
  'file.stat': 'read',
  'proc.signal': 'write',
  'file.mkdir': 'write',
  'file.remove': 'write',
  'file.rename': 'write',
} as const satisfies Record<HostdEndpoint | SchedEndpoint, 'read' | 'write'>;

/** An endpoint that only reads: asking twice is the same as asking once. */
export function isReadEndpoint(endpoint: HostdEndpoint | SchedEndpoint): boolean {
  return ENDPOINT_KINDS[endpoint] === 'read';
}
