import { z } from 'zod';
import { HostId, ImageName } from './ids.js';
import { Accel } from './vm.js';

export const HostInfo = z.strictObject({
  id: HostId,
  accel: Accel,
  /** Why this accelerator: the probe's outcome. */
  accelReason: z.string(),
  qemuVersion: z.string(),
  cpus: z.number().int(),
  memTotalMiB: z.number().int(),
  memFreeMiB: z.number().int(),
  vms: z.number().int(),
  snapshots: z.number().int(),
  images: z.array(ImageName),
});
export type HostInfo = z.infer<typeof HostInfo>;

export const Empty = z.strictObject({});
export type Empty = z.infer<typeof Empty>;
