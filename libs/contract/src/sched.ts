import { z } from 'zod';
import { HostId, IdempotencyKey, ImageName } from './ids.js';
import { BootRequest, VmInfo } from './vm.js';
import { TemplateCreateRequest, TemplateDeleteResult, TemplateInfo, TemplateList, TemplateName, TemplateRef } from './template.js';
import { ForkRequestShape, ForkResult, SnapshotTree, perChildFitsCount } from './snapshot.js';
import { hostdContract } from './endpoints.js';
import { Empty, HostList } from './host.js';
import type { SchedEndpoint } from './subjects.js';

/** Where to run: a pinned host, or (default) the scheduler's choice. */
const Placement = { host: HostId.optional() };

/**
 * With `template`, the VM is a fork of the template's snapshot: its image, RAM and vCPUs are the
 * template's, so image, memMiB and cpus have no defaults here (hostd applies them to a plain
 * boot) and the scheduler refuses ones that differ from the template's.
 */
export const SchedBootRequest = BootRequest.extend({
  ...Placement,
  image: ImageName.optional(),
  memMiB: z.number().int().min(64).max(65536).optional(),
  cpus: z.number().int().min(1).max(64).optional(),
  template: TemplateName.optional(),
}).strict();
export type SchedBootRequest = z.infer<typeof SchedBootRequest>;

const SchedForkShape = ForkRequestShape.extend({
  ...Placement,
  /** Spread the children over every live host (the snapshot travels through the object store). */
  spread: z.boolean().default(false),
}).strict();
export const SchedForkRequest = SchedForkShape.superRefine(perChildFitsCount);
export type SchedForkRequest = z.infer<typeof SchedForkRequest>;

export const MAX_BATCH = 100;

export const BatchRequest = z.strictObject({
  items: z
    .array(SchedForkShape.omit({ key: true }).superRefine(perChildFitsCount))
    .min(1)
    .max(MAX_BATCH),
  key: IdempotencyKey.optional(),
});
export type BatchRequest = z.infer<typeof BatchRequest>;

export const BatchItemResult = z.union([
  z.strictObject({ ok: z.literal(true), result: ForkResult }),
  z.strictObject({ ok: z.literal(false), error: z.strictObject({ code: z.string(), message: z.string() }) }),
]);
export const BatchResult = z.strictObject({ results: z.array(BatchItemResult) });
export type BatchResult = z.infer<typeof BatchResult>;

const {
  'host.info': _hostInfo,
  'host.ping': _hostPing,
  'snapshot.publish': _publish,
  'snapshot.fetch': _fetch,
  'fork.abandon': _abandon,
  ...forwarded
} = hostdContract;

/** The scheduler's endpoints: the hostd ones (placed or forwarded), plus hosts and batch. */
export const schedContract = {
  ...forwarded,
  hosts: { request: Empty, reply: HostList },
  'vm.boot': { request: SchedBootRequest, reply: VmInfo },
  fork: { request: SchedForkRequest, reply: ForkResult },
  batch: { request: BatchRequest, reply: BatchResult },
  /** The lineage of every snapshot in the cluster, from JetStream. */
  'snapshot.tree': { request: Empty, reply: SnapshotTree },
  'template.create': { request: TemplateCreateRequest, reply: TemplateInfo },
  'template.list': { request: Empty, reply: TemplateList },
  'template.show': { request: TemplateRef, reply: TemplateInfo },
  'template.delete': { request: TemplateRef, reply: TemplateDeleteResult },
} as const satisfies Record<SchedEndpoint, { request: z.ZodType; reply: z.ZodType }>;

export type SchedContract = typeof schedContract;
export type SchedRequestOf<E extends SchedEndpoint> = z.input<SchedContract[E]['request']>;
export type SchedParsedRequestOf<E extends SchedEndpoint> = z.output<SchedContract[E]['request']>;
export type SchedReplyOf<E extends SchedEndpoint> = z.output<SchedContract[E]['reply']>;

/**
 * A keyed request that changes the cluster is queued as a job on the work-queue stream, so any
 * scheduler can finish it when the one that took it dies. The request is the endpoint's parsed
 * request; the worker validates it again against the same schema.
 */
export const JOB_ENDPOINTS = ['vm.boot', 'snapshot.create', 'fork', 'batch', 'template.create'] as const satisfies readonly SchedEndpoint[];
export type JobEndpoint = (typeof JOB_ENDPOINTS)[number];

export const Job = z.strictObject({
  v: z.literal(1),
  endpoint: z.enum(JOB_ENDPOINTS),
  key: IdempotencyKey,
  /** The digest of the request (requestHash): the same key must mean the same request. */
  hash: z.string().regex(/^[0-9a-f]{32}$/),
  request: z.record(z.string(), z.unknown()),
  submittedAt: z.string(),
});
export type Job = z.infer<typeof Job>;
