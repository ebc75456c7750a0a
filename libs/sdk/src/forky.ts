import type { NatsConnection } from '@nats-io/nats-core';
import { newId } from '@forky/base';
import type { RetryNotice } from '@forky/bus';
import type {
  AppMount,
  HostStatus,
  Labels,
  NetworkPolicy,
  SelfForkPolicy,
  SnapshotInfo,
  SnapshotTree,
  VmInfo,
  VmState,
} from '@forky/contract';
import { connectTo, defaultDataDir, resolveConnection } from './connect.js';
import { lifetime, type Duration, type IdleOption } from './duration.js';
import { EventStream, type EventsOptions } from './events.js';
import { transport, type CallOptions, type Transport } from './transport.js';
import { Vm, type ForkOptions } from './vm.js';

export interface ConnectOptions {
  /** NATS URL(s) of the cluster; default FORKY_SERVER, else the local cluster of `data`. */
  servers?: string;
  /** A 0600 JSON file `{user, pass}` (what `forky up` writes); default FORKY_NATS_AUTH_FILE or the local cluster's. */
  authFile?: string;
  /** The CA to trust for TLS; default FORKY_NATS_CA or the local cluster's. */
  caFile?: string;
  /** The data directory of a `forky up` cluster (default FORKY_DATA, else ./.forky). */
  data?: string;
  /** Deadline of each request (default 120 s: a boot or a fork of many children takes a while). */
  requestTimeoutMs?: number;
  /** Told before a lost reply is asked again (reads, and writes under their idempotency keys). */
  onRetry?: (n: RetryNotice) => void;
  /** Shown by the NATS server for this connection. */
  name?: string;
}

export interface CreateOptions extends CallOptions {
  /** The guest image (default `tiny`). */
  image?: string;
  /** Fork this template (`forky template create`) instead of booting: its image, memory and vCPUs, in a fork's time. */
  template?: string;
  memMiB?: number;
  cpus?: number;
  /** Disk size in GiB (sparse; the guest grows its file system to fit). */
  diskGiB?: number;
  /** Where the guest may connect (default: the public internet only). */
  network?: NetworkPolicy;
  apps?: AppMount[];
  /** Place it on this host. */
  host?: string;
  /** Unique in the cluster: a name already taken is refused (CONFLICT, field `name`). */
  name?: string;
  /** Its children inherit them. */
  labels?: Labels;
  /** Destroyed this long after it was made (ms, or `'5s'`, `'10m'`, `'2h'`): an `expired` event, then `destroyed`; `vm.extend()` moves it. */
  ttl?: Duration;
  /** Paused or destroyed after `after` without activity; one it paused resumes when touched (exec, files, ports). */
  idle?: IdleOption;
  /** Lets its guest fork itself (`forky-fork`) within this budget, shared with what it forks; default: it may not. */
  selfFork?: SelfForkPolicy;
}

/** Filters, applied by the cluster; every one given must match. */
export interface ListOptions extends CallOptions {
  /** Any of these states. */
  state?: VmState | readonly VmState[];
  /** Every one of these labels. */
  labels?: Labels;
  image?: string;
  /** Booted from this template. */
  template?: string;
  /** Forked from this snapshot. */
  parent?: string;
}

/** Filters for `snapshots.list`, applied by the cluster. */
export interface SnapshotListOptions extends CallOptions {
  /** Taken of a VM with every one of these labels. */
  labels?: Labels;
  vm?: string;
  image?: string;
}

/** The VMs of the cluster. */
export class Vms {
  /** @internal */
  constructor(private readonly t: Transport) {}

  /** Boots a VM and returns once its guest agent answers. */
  async create(o: CreateOptions = {}): Promise<Vm> {
    const { signal, timeoutMs, ttl, idle, ...rest } = o;
    // Checked before anything is sent: a bad ttl or idle is a ValidationError naming it.
    const body = { ...rest, ...lifetime({ ttl, idle }), key: newId('sdkboot', 16) };
    const info = await this.t.call('vm.boot', body, { signal, timeoutMs });
    return new Vm(this.t, info);
  }

  async get(id: string, o: CallOptions = {}): Promise<Vm> {
    return new Vm(this.t, await this.t.call('vm.show', { id }, o));
  }

  async list(o: ListOptions = {}): Promise<Vm[]> {
    const { signal, timeoutMs, state, labels, image, template, parent } = o;
    const filter = {
      ...(state === undefined ? {} : { state: typeof state === 'string' ? [state as VmState] : [...state] }),
      ...(labels ? { labels } : {}),
      ...(image ? { image } : {}),
      ...(template ? { template } : {}),
      ...(parent ? { parent } : {}),
    };
    const { vms } = await this.t.call('vm.list', filter, { signal, timeoutMs });
    return vms.map((v: VmInfo) => new Vm(this.t, v));
  }
}

/** The snapshots of the cluster. */
export class Snapshots {
  /** @internal */
  constructor(private readonly t: Transport) {}

  async list(o: SnapshotListOptions = {}): Promise<SnapshotInfo[]> {
    const { signal, timeoutMs, labels, vm, image } = o;
    const filter = { ...(labels ? { labels } : {}), ...(vm ? { vm } : {}), ...(image ? { image } : {}) };
    return (await this.t.call('snapshot.list', filter, { signal, timeoutMs })).snapshots;
  }

  async get(id: string, o: CallOptions = {}): Promise<SnapshotInfo> {
    return this.t.call('snapshot.show', { id }, o);
  }

  /** The lineage of every snapshot. */
  async tree(o: CallOptions = {}): Promise<SnapshotTree> {
    return this.t.call('snapshot.tree', {}, o);
  }

  /** Forks children of a snapshot; `labels`, `perChild`, `ttl` and `idle` as in `vm.fork`. */
  async fork(
    id: string,
    o: CallOptions & Pick<ForkOptions, 'count' | 'spread' | 'labels' | 'perChild' | 'ttl' | 'idle'> = {},
  ): Promise<Vm[]> {
    const req = {
      source: id,
      count: o.count ?? o.perChild?.length ?? 1,
      spread: o.spread === true,
      ...(o.labels ? { labels: o.labels } : {}),
      ...(o.perChild ? { perChild: o.perChild } : {}),
      ...lifetime(o),
      key: newId('sdkfork', 16),
    };
    const r = await this.t.call('fork', req, { signal: o.signal, timeoutMs: o.timeoutMs });
    return r.children.map((c) => new Vm(this.t, c));
  }

  /** Deletes a snapshot everywhere; `cascade` also what depends on it. */
  async delete(id: string, o: CallOptions & { cascade?: boolean } = {}): Promise<{ snapshots: string[]; vms: string[] }> {
    return this.t.call('snapshot.delete', { id, cascade: o.cascade === true }, o);
  }
}

/**
 * A connection to a Forky Pig cluster: `const forky = await Forky.connect()` reaches the local
 * cluster `forky up` started; `Forky.connect({ servers, authFile })` any other.
 */
export class Forky {
  readonly vms: Vms;
  readonly snapshots: Snapshots;

  private constructor(
    private readonly t: Transport,
    private readonly owned: boolean,
  ) {
    this.vms = new Vms(t);
    this.snapshots = new Snapshots(t);
  }

  static async connect(o: ConnectOptions = {}): Promise<Forky> {
    const c = await resolveConnection(o.servers, path(o.data));
    const conn = { ...c, ...(o.authFile ? { authFile: o.authFile } : {}), ...(o.caFile ? { caFile: o.caFile } : {}) };
    const nc = await connectTo(conn, o.name ?? 'forky-sdk');
    return new Forky(transport(nc, o.requestTimeoutMs ?? 120_000, o.onRetry), true);
  }

  /** On a connection the caller owns (and closes). */
  static fromConnection(nc: NatsConnection, o: Pick<ConnectOptions, 'requestTimeoutMs' | 'onRetry'> = {}): Forky {
    return new Forky(transport(nc, o.requestTimeoutMs ?? 120_000, o.onRetry), false);
  }

  /** The hosts of the cluster, with their capacity and health. */
  async hosts(o: CallOptions = {}): Promise<HostStatus[]> {
    return (await this.t.call('hosts', {}, o)).hosts;
  }

  /**
   * The cluster's VM and snapshot events as they happen (`for await (const e of forky.events())`);
   * a slow reader loses the newest past `maxPending` (`stream.dropped`). See events.ts.
   */
  events(o: EventsOptions = {}): EventStream {
    return new EventStream(this.t.nc, o);
  }

  /** Closes the connection (one given to fromConnection is left open). */
  async close(): Promise<void> {
    if (this.owned) await this.t.nc.close();
  }
}

const path = (data: string | undefined): string => data ?? defaultDataDir();
