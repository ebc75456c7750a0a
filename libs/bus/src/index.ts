export { connectBus, NatsConfig, natsConfigFromEnv, type BusOptions, type BusAuth, type BusTls } from './connect.js';
export {
  Credentials,
  authorizationConfig,
  hostPermissions,
  hostUser,
  inboxPrefixOf,
  newClusterAuth,
  newCredentials,
  readCredentials,
  schedulerPermissions,
  writeCredentials,
  type ClusterAuth,
} from './auth.js';
export { startService, type EndpointDef, type ServiceDef } from './service.js';
export { request, HostdClient, SchedulerClient, type ClientOptions, type RequestOptions } from './client.js';
export { isLostReply, isResendable, keyOf, sendWithRetries, type RetryNotice, type RetryOptions } from './resend.js';
export { openBuckets, createOrOpen, bindExisting, resolveReplicas, BucketReplicas, type Buckets } from './buckets.js';
export { startNatsServer, writeServerConfig, type NatsServer, type NatsServerOptions } from './nats-server.js';
export { JobQueue, type JobQueueOptions, type JobOutcome, type JobDelivery } from './jobs.js';
export { isTransientNatsError, retryTransient } from './retry.js';
export { ObjectPartStore, PARTS_BUCKET, type PartStoreOptions, type UploadResult } from './object-parts.js';
export { CorruptPartError } from './chunk-map.js';
export { digestFile } from './sparse.js';
export { headerOf, setHeader, safeHeaders } from './headers.js';
export { PastDeadlineError, callerDeadline, outsideCaller, refuseIfLate, type CallerTimes } from './deadlines.js';
export { LocatorEntry, entryValue, isReadableKey, logBadEntry } from './entries.js';
export { ClientStream, type StreamChunk, type StreamEnd, type OpenStreamOptions } from './streams.js';
export { openStream } from './stream-open.js';
export { carrySocket, type CarriedStream, type CarryOptions, type CarryEnd } from './port-carry.js';
