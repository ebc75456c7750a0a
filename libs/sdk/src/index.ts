/**
 * @forky/sdk: the one way code talks to a Forky Pig cluster (README.md). Every write goes under an
 * idempotency key; every long call takes an AbortSignal; failures are ForkyErrors with a `code`.
 */
export { Forky, Vms, Snapshots, type ConnectOptions, type CreateOptions, type ListOptions, type SnapshotListOptions } from './forky.js';
export { Vm, type ForkOptions, type ForkOutcome } from './vm.js';
export { Files, type FileEntry, type FileStat, type ReadOptions, type WriteOptions } from './files.js';
export { Process, type OutputChunk, type ProcessExit, type StreamEvent } from './process.js';
export type { AttachOptions, ExecOptions, ExecResult, PtyOptions, SpawnOptions } from './exec.js';
export { FileWatch, type WatchEvent, type WatchOptions, type DropReason } from './watch.js';
// Lower level (README "On your own transport"): what Vm and Files do, on any Calls (the CLI's session is one).
export { spawn, attach, startDetached, exec, pty } from './exec.js';
export { watch } from './watch.js';
export { transport, type Calls, type StreamLike, type Transport } from './transport.js';
export { EventStream, type EventsOptions } from './events.js';
export { PortForward, type PortForwardOptions, type LocalAddress, type ConnectionFailure } from './port-forward.js';
export type { CallOptions } from './transport.js';
export { parseDuration, ttlMs, idleRule, type Duration, type IdleOption } from './duration.js';
export { readCluster, resolveConnection, connectTo, clusterFile, defaultDataDir, type ClusterFile, type Connection } from './connect.js';
export { ForkyError, ErrorCodes, type ErrorCode } from '@forky/base';
export type {
  VmInfo,
  VmState,
  LifecycleInfo,
  IdleRule,
  Labels,
  SnapshotInfo,
  SnapshotTree,
  HostStatus,
  ForkResult,
  Egress,
  NetworkPolicy,
  SelfForkPolicy,
  SelfForkInfo,
} from '@forky/contract';
export type { VmEvent, EventKind } from '@forky/contract';
