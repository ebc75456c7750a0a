import type { NatsConnection } from '@nats-io/nats-core';
import { newId } from '@forky/base';
import type { RetryNotice } from '@forky/bus';
import type { AppMount, HostStatus, NetworkPolicy, SnapshotInfo, SnapshotTree, VmInfo, VmState } from '@forky/contract';
import { connectTo, defaultDataDir, resolveConnection } from './connect.js';
import { transport, type CallOptions, type Transport } from './transport.js';
import { Vm } from './vm.js';

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
  memMiB?: number;
  cpus?: number;
  /** Disk size in GiB (sparse; the guest grows its file system to fit). */
  diskGiB?: number;
  /** Where the guest may connect (default: the public internet only). */
  network?: NetworkPolicy;
  apps?: AppMount[];
  /** Place it on this host. */
  host?: string;
}

export interface ListOptions extends CallOptions {
  state?: VmState | readonly VmState[];
}

/** The VMs of the cluster. */
export class Vms {
  /** @internal */
  constructor(private readonly t: Transport) {}

  /** Boots a VM and returns once its guest agent answers. */
  async create(o: CreateOptions = {}): Promise<Vm> {
    const { signal, timeoutMs, ...rest } = o;
    const info = await this.t.call('vm.boot', { ...rest, key: newId('sdkboot', 16) }, { signal, timeoutMs });
    return new Vm(this.t, info);
  }

  async get(id: string, o: CallOptions = {}): Promise<Vm> {
    return new Vm(this.t, await this.t.call('vm.show', { id }, o));
  }

  async list(o: ListOptions = {}): Promise<Vm[]> {
    const states = o.state === undefined ? undefined : new Set<string>(typeof o.state === 'string' ? [o.state] : o.state);
    const { vms } = await this.t.call('vm.list', {}, o);
    return vms.filter((v: VmInfo) => !states || states.has(v.state)).map((v: VmInfo) => new Vm(this.t, v));
  }
}

/** The snapshots of the cluster. */
export class Snapshots {
  /** @internal */
  constructor(private readonly t: Transport) {}

  async list(o: CallOptions = {}): Promise<SnapshotInfo[]> {
    return (await this.t.call('snapshot.list', {}, o)).snapshots;
  }

  async get(id: string, o: CallOptions = {}): Promise<SnapshotInfo> {
    return this.t.call('snapshot.show', { id }, o);
  }

  /** The lineage of every snapshot. */
  async tree(o: CallOptions = {}): Promise<SnapshotTree> {
    return this.t.call('snapshot.tree', {}, o);
  }

  /** Forks children of a snapshot. */
  async fork(id: string, o: CallOptions & { count?: number; spread?: boolean } = {}): Promise<Vm[]> {
    const r = await this.t.call('fork', { source: id, count: o.count ?? 1, spread: o.spread === true, key: newId('sdkfork', 16) }, o);
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

  /** Closes the connection (one given to fromConnection is left open). */
  async close(): Promise<void> {
    if (this.owned) await this.t.nc.close();
  }
}

const path = (data: string | undefined): string => data ?? defaultDataDir();
