import { z } from 'zod';
import { HostId, IdempotencyKey, ImageName, SnapshotId } from './ids.js';
import { NetworkPolicy } from './network.js';

/**
 * Templates (issue 19): a VM booted from an image, set up by shell steps, frozen once a ready
 * command succeeds, and kept under a name. Booting "from" a template forks its snapshot, on any
 * host (the snapshot is published to the object store).
 */

/** A template's name: also its key in the templates bucket, so no dots. */
export const TemplateName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'lowercase letters, digits, _ and -, at most 63');
export type TemplateName = z.infer<typeof TemplateName>;

export const TEMPLATE_MAX_STEPS = 32;
export const TEMPLATE_STEP_MAX_BYTES = 8192;
export const TEMPLATE_READY_TIMEOUT_MAX_MS = 30 * 60_000;
export const TEMPLATE_STEP_TIMEOUT_MAX_MS = 10 * 60_000;

/** One shell command line, run as `/bin/sh -c STEP` in the guest. */
const Step = z
  .string()
  .min(1)
  .refine((s) => Buffer.byteLength(s) <= TEMPLATE_STEP_MAX_BYTES, `at most ${TEMPLATE_STEP_MAX_BYTES} bytes`);

/**
 * Makes (or replaces) a template. `image` defaults to `tiny`, like `vm.boot`: the two requests
 * take the same machine fields with the same defaults. A step's process must not keep the
 * step's output open (redirect it) or it holds the step until its timeout; `setsid` keeps it out
 * of the step's process group, which a timeout kills.
 */
export const TemplateCreateRequest = z.strictObject({
  name: TemplateName,
  image: ImageName.default('tiny'),
  memMiB: z.number().int().min(64).max(65536).default(256),
  cpus: z.number().int().min(1).max(64).default(1),
  diskGiB: z.number().int().min(1).max(1024).optional(),
  run: z.array(Step).max(TEMPLATE_MAX_STEPS).default([]),
  /** Polled every 250–500 ms after the steps until it exits 0. */
  ready: Step.optional(),
  readyTimeoutMs: z.number().int().min(1_000).max(TEMPLATE_READY_TIMEOUT_MAX_MS).default(120_000),
  stepTimeoutMs: z.number().int().min(1_000).max(TEMPLATE_STEP_TIMEOUT_MAX_MS).default(TEMPLATE_STEP_TIMEOUT_MAX_MS),
  /** The builder VM's egress, inherited by every VM of the template; default as `vm.boot`. */
  network: NetworkPolicy.optional(),
  /** Where to build it (default: the scheduler's choice); its VMs may run on any host. */
  host: HostId.optional(),
  key: IdempotencyKey.optional(),
});
export type TemplateCreateRequest = z.infer<typeof TemplateCreateRequest>;

export const TemplateInfo = z.strictObject({
  name: TemplateName,
  snapshot: SnapshotId,
  image: ImageName,
  /** The image's content id: a host with another build of the image cannot restore it. */
  imageId: z.string().max(256),
  memMiB: z.number().int(),
  cpus: z.number().int(),
  run: z.array(z.string()),
  ready: z.string().optional(),
  createdAt: z.string(),
  /** Where it was made (its snapshot's home; any host may fork it). */
  host: HostId,
  sizes: z.strictObject({ stateBytes: z.number(), ramBytes: z.number(), diskBytes: z.number() }).optional(),
  /** Milliseconds of each phase of making it. */
  timings: z.record(z.string(), z.number()).optional(),
  /** The request that made it: a later delivery of that request's job returns this, not a rebuild. */
  key: IdempotencyKey.optional(),
});
export type TemplateInfo = z.infer<typeof TemplateInfo>;

/** A replaced or removed template's snapshot that VMs still run on; reaped once they are gone. */
export const RetiredTemplate = z.strictObject({
  snapshot: SnapshotId,
  name: TemplateName,
  retiredAt: z.string(),
  /**
   * When its home copy was deleted. The record stays while any host's last heartbeat (a host that
   * is down too) lists a copy fetched there, and a grace after, so that copies get deleted.
   */
  homeDeletedAt: z.string().optional(),
});
export type RetiredTemplate = z.infer<typeof RetiredTemplate>;

export const TemplateList = z.strictObject({
  templates: z.array(TemplateInfo),
  /** Snapshots of old templates kept until no VM uses them. */
  retired: z.array(RetiredTemplate),
});
export type TemplateList = z.infer<typeof TemplateList>;

export const TemplateRef = z.strictObject({ name: TemplateName });
export type TemplateRef = z.infer<typeof TemplateRef>;

export const TemplateDeleteResult = z.strictObject({
  name: TemplateName,
  snapshot: SnapshotId,
  /** True when the snapshot was deleted now; false when VMs still use it and it is kept as retired. */
  deleted: z.boolean(),
});
export type TemplateDeleteResult = z.infer<typeof TemplateDeleteResult>;
