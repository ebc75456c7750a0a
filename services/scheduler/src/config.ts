import { z } from 'zod';
import { BucketReplicas, NatsConfig, natsConfigFromEnv } from '@forky/bus';
import { parseConfig, readConfigFile } from '@forky/base';

export const SchedulerConfig = z.strictObject({
  nats: NatsConfig,
  hostTimeoutMs: z.number().int().positive().default(600_000),
  /**
   * How long a ping of a host whose beats stopped waits (3 unanswered in a row: the host is hung,
   * and its calls are given up). A host starved of CPU must still answer within it.
   */
  hostProbeTimeoutMs: z.number().int().min(100).default(5_000),
  leaseMs: z.number().int().min(500).default(5_000),
  childCostMiB: z.number().int().min(1).default(48),
  /** A job whose scheduler stops showing signs of life for this long goes to another scheduler. */
  jobAckWaitMs: z.number().int().min(1_000).default(30_000),
  /** Deliveries of one job (first try and retries after hosts failed) before it is recorded as failed. */
  jobMaxDeliver: z.number().int().min(1).max(100).default(5),
  /** Jobs one scheduler runs at once. */
  jobConcurrency: z.number().int().min(1).max(256).default(8),
  /** Replicas of the buckets and streams this service creates: `auto` is 3 on a cluster of 3 or more nodes. */
  bucketReplicas: BucketReplicas,
  /** Bound on each start-up step (opening buckets, reading hosts, the jobs stream); a hung step starts over. */
  startStepTimeoutMs: z.number().int().min(1_000).default(20_000),
  /** How often retired template snapshots are tried for deletion (also after each template create and delete). */
  templateReapMs: z.number().int().min(100).default(30_000),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});
export type SchedulerConfig = z.infer<typeof SchedulerConfig>;

const env = (k: string): string | undefined => process.env[k] || undefined;

/** defaults < file (--config / FORKY_SCHEDULER_CONFIG) < env < flags */
export function loadSchedulerConfig(flags: Record<string, unknown> = {}): Readonly<SchedulerConfig> {
  const { config, ...flagLayer } = flags;
  const file = readConfigFile((config as string | undefined) ?? env('FORKY_SCHEDULER_CONFIG'));
  const fromEnv = {
    nats: natsConfigFromEnv(),
    logLevel: env('FORKY_LOG_LEVEL'),
  };
  return parseConfig(SchedulerConfig, { nats: { servers: ['nats://127.0.0.1:4222'] } }, file, fromEnv, flagLayer);
}
