import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { BucketReplicas, NatsConfig, natsConfigFromEnv } from '@forky/bus';
import { parseConfig, readConfigFile } from '@forky/base';
import { EgressAllowEntry, HostId } from '@forky/contract';

const Limits = z.strictObject({
  bootTimeoutMs: z.number().int().positive().default(60_000),
  restoreTimeoutMs: z.number().int().positive().default(20_000),
  forkConcurrency: z
    .number()
    .int()
    .min(1)
    .max(64)
    .default(Math.max(2, os.cpus().length * 2)),
  maxVms: z.number().int().min(1).max(10_000).default(1000),
  childCostMiB: z.number().int().min(1).default(48),
  reserveMiB: z.number().int().min(0).default(512),
  /** Disk layers a VM's chain may reach (image base included) before a snapshot flattens it. */
  maxChainDepth: z.number().int().min(2).max(64).default(8),
  /** Bounds a guest-agent call made by hostd itself (the identity hook). */
  agentTimeoutMs: z.number().int().positive().default(10_000),
  /**
   * Copy a child's private pages before a snapshot's pause, then only what it wrote since
   * (soft-dirty tracking; where the kernel has none, nothing changes). Off until verified on a
   * kernel with soft-dirty (issue 21, point 5): a missed page would be a child resuming wrong.
   */
  snapshotPrecopy: z.boolean().default(false),
});

const Pool = z.strictObject({
  /** QEMU processes kept started and waiting, per recently forked snapshot (0: no pool). */
  size: z.number().int().min(0).max(64).default(1),
  /** Snapshots that keep a pool at once; the least recently forked loses its pool first. */
  maxSnapshots: z.number().int().min(1).max(1000).default(4),
});

const Ksm = z.strictObject({
  /** Turn kernel same-page merging on at start (needs root; changes a host-wide setting). */
  enabled: z.boolean().default(false),
  pagesToScan: z.number().int().min(1).default(5000),
  sleepMs: z.number().int().min(0).default(20),
});

/**
 * `filter`: `auto` uses nftables where this host can (root, nft, cgroup v2), and otherwise gives
 * guests no network at all (QEMU `restrict=on`: only egress `none`); `nftables` refuses to start
 * without it; `none` never filters, so guests get no network. `deny`: more blocks no guest may
 * reach whatever its policy (the cluster's own networks, if they are public). `resolvers`: the DNS
 * servers guests may query (default: the host's /etc/resolv.conf).
 */
const NetworkFilterConfig = {
  filter: z.enum(['auto', 'nftables', 'none']).default('auto'),
  deny: z.array(EgressAllowEntry).max(256).default([]),
  resolvers: z.array(z.ipv4().or(z.ipv6())).max(16).optional(),
};

export const HostdConfig = z.strictObject({
  hostId: HostId,
  nats: NatsConfig,
  dataDir: z.string().min(1),
  ramDir: z.string().min(1),
  imagesDir: z.string().min(1),
  qemu: z
    .strictObject({
      binary: z.string().default('qemu-system-x86_64'),
      img: z.string().default('qemu-img'),
      accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
      machine: z.string().default('pc'),
      /** Default: `host` under KVM, `qemu64` under TCG. */
      cpuModel: z.string().optional(),
      tcgTbSizeMiB: z.number().int().min(1).max(2048).optional(),
      sandbox: z.boolean().default(true),
      /**
       * QEMU's CPU niceness: guests (hostile, or just busy) yield to hostd, the NATS server and the
       * scheduler on the same box, so a host full of spinning guests still heartbeats and answers.
       */
      nice: z.number().int().min(0).max(19).default(10),
      /** Whom QEMU runs as: `auto` (forky-qemu where the host allows), `none` (hostd's user), or a user name. */
      runAs: z
        .string()
        .regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'auto, none or a user name')
        .default('auto'),
      probeTimeoutMs: z.number().int().positive().default(8000),
      /** Default: <dataDir>/accel-probe.json. */
      probeCacheFile: z.string().optional(),
      /** The image a KVM probe boots. */
      probeImage: z.string().default('tiny'),
    })
    .prefault({}),
  limits: Limits.prefault({}),
  /**
   * VMs' NICs: QEMU user-mode NAT (default), or a TAP device per VM on an existing host bridge;
   * and how each VM's egress policy is enforced (README "Network isolation").
   */
  network: z
    .discriminatedUnion('mode', [
      z.strictObject({ mode: z.literal('user'), ...NetworkFilterConfig }),
      z.strictObject({ mode: z.literal('tap'), bridge: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/), ...NetworkFilterConfig }),
    ])
    .prefault({ mode: 'user' }),
  pool: Pool.prefault({}),
  /** Simulate a host: VMs are records only, no QEMU runs (for scheduler benchmarks). */
  dryRun: z.boolean().default(false),
  ksm: Ksm.prefault({}),
  gpu: z
    .strictObject({
      /** Where PCI devices are listed: GPUs bound to vfio-pci are found under it (tests use a fake tree). */
      sysfsRoot: z.string().min(1).default('/sys'),
    })
    .prefault({}),
  /**
   * How long a snapshot nothing uses (no VM runs on it, no fork or warm process uses it, none
   * descends from it) and that is no template's is kept before this host deletes it; 0: never.
   */
  snapshotRetentionMs: z
    .number()
    .int()
    .min(0)
    .max(365 * 24 * 3600_000)
    .default(24 * 3600_000),
  /** How often this host reports into the hosts bucket. */
  heartbeatMs: z.number().int().min(100).max(60_000).default(2000),
  /** Replicas of the KV buckets hostd creates if missing (3 on a 3-node cluster). */
  /** Replicas of the buckets and streams this service creates: `auto` is 3 on a cluster of 3 or more nodes. */
  bucketReplicas: BucketReplicas,
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});
export type HostdConfig = z.infer<typeof HostdConfig>;
export type HostdConfigInput = z.input<typeof HostdConfig>;

/** The host name, made into a valid host id. */
export function defaultHostId(): string {
  return (
    os
      .hostname()
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, '-')
      .replace(/^-+/, '')
      .slice(0, 63) || 'host'
  );
}

function defaults(hostId: string, cwd: string): Record<string, unknown> {
  return {
    hostId,
    nats: { servers: ['nats://127.0.0.1:4222'] },
    dataDir: path.resolve(cwd, '.forky', 'hosts', hostId),
    ramDir: path.join('/dev/shm', 'forky', hostId),
    imagesDir: path.resolve(cwd, '.forky', 'images'),
  };
}

const env = (k: string): string | undefined => process.env[k] || undefined;
/** A number from the environment; one that is not a number is left for the schema to refuse, naming its field. */
const numEnv = (k: string): number | string | undefined => {
  const v = env(k);
  return v === undefined || !/^\d+$/.test(v.trim()) ? v : Number(v);
};

/** Configuration from defaults < file (--config / FORKY_HOSTD_CONFIG) < env (FORKY_*) < flags. */
export function loadHostdConfig(flags: Record<string, unknown> = {}, cwd = process.cwd()): Readonly<HostdConfig> {
  const file = readConfigFile((flags.config as string | undefined) ?? env('FORKY_HOSTD_CONFIG'));
  const fromEnv = {
    hostId: env('FORKY_HOST_ID'),
    nats: natsConfigFromEnv(),
    dataDir: env('FORKY_DATA_DIR'),
    ramDir: env('FORKY_RAM_DIR'),
    imagesDir: env('FORKY_IMAGES_DIR'),
    qemu: { accel: env('FORKY_ACCEL'), probeCacheFile: env('FORKY_PROBE_CACHE') },
    logLevel: env('FORKY_LOG_LEVEL'),
    snapshotRetentionMs: numEnv('FORKY_SNAPSHOT_RETENTION_MS'),
  };
  const { config: _config, ...flagLayer } = flags;
  const hostId = String((flagLayer.hostId as string | undefined) ?? fromEnv.hostId ?? file.hostId ?? defaultHostId());
  return parseConfig(HostdConfig, defaults(hostId, cwd), file, fromEnv, flagLayer);
}
