// The wire contract is what this package publishes: every schema and table, by name.
export { VmId, SnapshotId, HostId, ImageName, ForkSource, IdempotencyKey } from './ids.js';
export {
  EGRESS_ALLOW_MAX,
  parseEgressRule,
  EgressAllowEntry,
  Egress,
  NetworkPolicy,
  NetworkEnforcement,
  NetworkInfo,
  VmNetworkRequest,
  type EgressRule,
} from './network.js';
export { LayerDigest, MAX_APPS, MountPoint, AppMount, AppList } from './app.js';
export { VM_STATES, VmState, Accel, VmInfo, BootRequest, VmRef, VmAppRequest, VmList, ExecRequest, ExecResult } from './vm.js';
export {
  MachineProfile,
  SnapshotInfo,
  SnapshotCreateRequest,
  SnapshotRef,
  SnapshotDeleteRequest,
  SnapshotDeleteResult,
  LineageNode,
  SnapshotTree,
  SnapshotList,
  MAX_FORK_COUNT,
  ForkRequest,
  TransferResult,
  ForkResult,
} from './snapshot.js';
export {
  STREAM_CHUNK_MAX,
  DEFAULT_STREAM_WINDOW,
  MAX_STREAM_WINDOW,
  STREAM_KEEPALIVE_MS,
  STREAM_IDLE_MS,
  STREAM_HEADERS,
  OUT_KINDS,
  IN_KINDS,
  GuestPath,
  GuestEnv,
  ExecStartRequest,
  ProcAttachRequest,
  FileReadRequest,
  FileWriteRequest,
  FileWatchRequest,
  PortOpenRequest,
  StreamRef,
  StreamOpenReply,
  GUEST_SIGNALS,
  ProcListRequest,
  ProcListReply,
  ProcSignalRequest,
  FileListRequest,
  FileListReply,
  FileStatRequest,
  FileStatReply,
  FileMkdirRequest,
  FileRemoveRequest,
  FileRenameRequest,
  GuestOk,
  STREAM_OPEN_ENDPOINTS,
  GUEST_UNARY_ENDPOINTS,
  GUEST_ENDPOINTS,
  guestContract,
  StreamEndBody,
  CreditBody,
  ResizeBody,
  type OutKind,
  type InKind,
  type StreamOpenEndpoint,
  type GuestUnaryEndpoint,
  type GuestEndpoint,
} from './guest.js';
export { HostInfo, Empty, Heartbeat, HostStatus, HostList } from './host.js';
export { WireError, toWireError, RemoteError, fromWireError } from './wire-error.js';
export { detectFormat, decodeBody, encodeBody, CONTENT_TYPE, type Format } from './codec.js';
export { fieldPath, parseOrThrow } from './validate.js';
export {
  SUBJECT_ROOT,
  HOSTD_ENDPOINTS,
  SCHED_ENDPOINTS,
  subjects,
  STREAMS,
  JOBS_CONSUMER,
  SERVICE_NAMES,
  BUCKETS,
  type HostdEndpoint,
  type SchedEndpoint,
} from './subjects.js';
export {
  hostdContract,
  ENDPOINT_KINDS,
  isReadEndpoint,
  type HostdContract,
  type RequestOf,
  type ParsedRequestOf,
  type ReplyOf,
} from './endpoints.js';
export {
  SchedBootRequest,
  SchedForkRequest,
  MAX_BATCH,
  BatchRequest,
  BatchItemResult,
  BatchResult,
  schedContract,
  JOB_ENDPOINTS,
  Job,
  type SchedContract,
  type SchedRequestOf,
  type SchedParsedRequestOf,
  type SchedReplyOf,
  type JobEndpoint,
} from './sched.js';
export { HEADER_MAX_BYTES, truncateUtf8, headerText, quoteText, boundedText, excerpt } from './safe-text.js';
export { DEADLINE_HEADERS, CLOCK_SKEW_MS, DEFAULT_DEADLINE_MS, parseTimeHeader } from './deadlines.js';
export { GATEWAY_ENDPOINTS, gatewaySubject, GatewayUrlRequest, GatewayUrlReply, gatewayContract, type GatewayEndpoint } from './gateway.js';
