import { z } from 'zod';
import { VmId } from './ids.js';

/** The longest a TTL or idle period may be: 30 days (a VM meant to live longer has none). */
export const MAX_LIFETIME_MS = 30 * 24 * 3_600_000;

/** How long a VM may live, counted from when it was made (or from a `vm.extend`). At least 1 s. */
export const TtlMs = z.number().int().min(1_000).max(MAX_LIFETIME_MS);

/**
 * What to do with a VM nobody has used for `afterMs`: activity is an exec, a process's output or
 * input, a file read or write, or a port connection's bytes. A VM paused by its idle rule resumes
 * by itself when an exec, file, process or port request reaches it (`vm.resume` works too).
 */
export const IdleRule = z.strictObject({
  afterMs: z.number().int().min(1_000).max(MAX_LIFETIME_MS),
  then: z.enum(['pause', 'destroy']),
});
export type IdleRule = z.infer<typeof IdleRule>;

/**
 * A VM's lifecycle as `vm.show` reports it. `expiresAt`: when hostd destroys it (an `expired`
 * event, then `destroyed`); `lastActivityAt`: what the idle rule counts from; `pausedBy: idle`
 * for a VM its idle rule paused (it resumes on touch).
 */
export const LifecycleInfo = z.strictObject({
  ttlMs: TtlMs.optional(),
  expiresAt: z.string().optional(),
  idle: IdleRule.optional(),
  lastActivityAt: z.string().optional(),
  pausedBy: z.literal('idle').optional(),
});
export type LifecycleInfo = z.infer<typeof LifecycleInfo>;

/** `vm.extend`: the VM now expires `ttlMs` from now (E2B's `setTimeout`); it may shorten the life too. */
export const VmExtendRequest = z.strictObject({ id: VmId, ttlMs: TtlMs });
export type VmExtendRequest = z.infer<typeof VmExtendRequest>;
