import path from 'node:path';
import fs from 'node:fs/promises';
import type { Logger } from '@forky/base';
import type { Egress } from '@forky/contract';
import type { NetworkFilter } from '../../domain/ports.js';
import { childDirs, makeDir, processesUnder, removeDir, type Cgroup2 } from './cgroups.js';
import { applyScript, clusterScript, names, safeName, tableScript, vmCgroup, vmIdOfChain, type HostFacts } from './egress-rules.js';
import { ensureScript, removeScript, sweepScript, type VmObjects } from './remove-rules.js';
import type { Nft } from './nft.js';
import { ApplyBatches } from './apply-batch.js';
import type { TapFilter } from './tap-filter.js';

const VM_DIR = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** What of the table exists now, from `nft -j list table`. */
interface TableState {
  elements: Set<string>;
  chains: Set<string>;
  counters: Set<string>;
}

export interface NftFilterParts {
  nft: Nft;
  cgroup: Cgroup2;
  /** This hostd's cgroup directory (`<cgroup2>/forky/<hostKey>`). */
  hostDir: string;
  facts: HostFacts;
  log: Logger;
  /** TAP mode: the devices' filter (netdev ingress); absent in user mode. */
  taps?: TapFilter;
}

/**
 * The nftables egress filter: every QEMU process of a VM runs in the VM's cgroup, and every packet
 * one of its sockets sends passes the VM's chain (QEMU user-mode networking makes a host socket per
 * guest connection). See egress-rules.ts for the rules.
 */
export class NftNetworkFilter implements NetworkFilter {
  readonly enforcement = 'nftables' as const;
  private queue: Promise<unknown> = Promise.resolve();
  private clusterKey: string | undefined;
  /** The host cgroup's inode when the table's rule was made: the rule names that directory by it. */
  private hostIno = 0;
  /** TAP devices bound, to bind again after a repair. */
  private readonly devices = new Map<string, { vmId: string; mac: string }>();

  private readonly batches = new ApplyBatches((fn) => this.enqueue(fn), {
    prepare: (vmId) => makeDir(this.dir(vmId), false),
    run: (script) => this.p.nft.run(script),
    undo: (vmId) => removeDir(this.dir(vmId), 0),
  });

  private constructor(private readonly p: NftFilterParts) {}

  /** Makes (or, after a restart, reloads over live VMs) the host's cgroup and table. */
  static async open(parts: NftFilterParts): Promise<NftNetworkFilter> {
    const f = new NftNetworkFilter(parts);
    await f.makeTable();
    return f;
  }

  /** The host's cgroup and the table, made (or made again, over live VMs: every step is idempotent). */
  private async makeTable(): Promise<void> {
    await makeDir(this.p.hostDir);
    this.hostIno = (await fs.stat(this.p.hostDir)).ino;
    await this.p.nft.run(tableScript(this.p.facts) + (this.p.taps?.openScript() ?? ''));
  }

  get table(): string {
    return this.p.facts.table;
  }

  /** One nft change at a time: a remove must not interleave with an apply of the same VM. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    // Queued behind a batch of applies: a later apply must not join it and run before this.
    this.batches.close();
    return this.enqueue(fn);
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Applies queued together run as one nft transaction (apply-batch.ts). */
  async apply(vmId: string, egress: Egress): Promise<void> {
    // Built first: a policy we cannot enforce throws before anything changes.
    const script = applyScript(this.p.facts, vmId, egress) + (this.p.taps?.vmScript(vmId, egress) ?? '');
    await this.batches.add(vmId, script);
    this.p.log.debug({ vmId, egress }, 'egress filter applied');
  }

  scope(vmId: string): string {
    return this.dir(vmId);
  }

  async bindDevice(vmId: string, device: string, mac: string): Promise<void> {
    if (!this.p.taps) return; // user mode: QEMU's sockets, not a device, carry the VM's packets
    const taps = this.p.taps;
    await this.serial(() => taps.bind(vmId, device, mac));
    this.devices.set(device, { vmId, mac });
  }

  async unbindDevice(device: string): Promise<void> {
    if (!this.p.taps) return;
    const taps = this.p.taps;
    await this.serial(() => taps.unbind(device));
    this.devices.delete(device);
  }

  /**
   * The other hosts' addresses (from their heartbeats), refused to every VM whatever its policy.
   * Unchanged lists are not re-sent.
   */
  async setClusterHosts(addrs: readonly string[]): Promise<void> {
    const list = [...new Set(addrs)].sort();
    const key = list.join(',');
    if (key === this.clusterKey) return;
    const fams = this.p.taps ? (['inet', 'netdev'] as const) : (['inet'] as const);
    await this.serial(() => this.p.nft.run(clusterScript(this.p.facts, [...fams], list)));
    this.clusterKey = key;
    this.p.log.info({ hosts: list.length }, 'cluster host addresses refused to VMs');
  }

  async holds(vmId: string, pid: number): Promise<boolean> {
    const want = `0::/${path.relative(this.p.cgroup.mount, this.dir(vmId))}`;
    const text = await fs.readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '');
    return text.split('\n').some((l) => l === want);
  }

  async upkeep(vms: ReadonlyArray<{ id: string; egress: Egress }>): Promise<boolean> {
    const ino = await fs.stat(this.p.hostDir).then(
      (s) => s.ino,
      () => 0,
    );
    // The table's names only, not its rules (a listing grows with the VMs). A listing that fails
    // (nft timing out under load) is no finding: read as "gone", it had every VM's policy applied
    // again every 10 s at load 130, on top of what made nft slow.
    let table: boolean;
    try {
      table = ((await this.p.nft.list(['tables', 'inet'])) ?? []).some(
        (o) => (o['table'] as { name?: string } | undefined)?.name === this.table,
      );
    } catch (err) {
      this.p.log.warn({ err, table: this.table }, 'egress filter not checked: nft did not list the tables');
      return false;
    }
    if (ino === this.hostIno && table) return false;
    this.p.log.error(
      { table: this.table, hostDir: this.p.hostDir, tableGone: !table, cgroupChanged: ino !== this.hostIno },
      'egress filter found changed under its VMs: making it again',
    );
    await this.serial(() => this.makeTable());
    for (const v of vms) await this.apply(v.id, v.egress);
    for (const [device, d] of this.devices) await this.bindDevice(d.vmId, device, d.mac);
    this.clusterKey = undefined; // the cluster sets were lost with the table: sent again next time
    return true;
  }

  async refused(vmId: string): Promise<number | undefined> {
    const listed = await this.p.nft.list(['counter', 'inet', this.table, names(vmId).counter]);
    const counter = listed?.find((o) => 'counter' in o)?.counter as { packets?: number } | undefined;
    if (!this.p.taps) return counter?.packets;
    return (counter?.packets ?? 0) + (await this.p.taps.refused(vmId));
  }

  async remove(vmId: string): Promise<void> {
    safeName(vmId);
    await this.serial(async () => {
      // No listing of the whole table (it grows with the VMs: ~100 ms a remove at 50 VMs): each
      // object is added (a no-op if it is there) and deleted in one transaction. The element
      // can be named only while its cgroup exists.
      const hasDir = await fs.stat(this.dir(vmId)).then(
        () => true,
        () => false,
      );
      const script =
        ensureScript(this.p.facts, vmId, hasDir) +
        removeScript(this.p.facts, vmId, { element: hasDir, chain: true, refuse: true, counter: true }) +
        (this.p.taps ? await this.p.taps.removeVmScript(vmId) : '');
      await this.p.nft.run(script);
      await removeDir(this.dir(vmId));
    });
  }

  async sweep(keep: ReadonlySet<string>): Promise<number> {
    return this.serial(async () => {
      const s = await this.state();
      const ids = new Set<string>(await childDirs(this.p.hostDir));
      for (const c of s.chains) {
        const id = vmIdOfChain(c);
        if (id) ids.add(id);
      }
      // A directory that is no VM's name (made by hand?) has no nft objects: only the directory goes.
      const valid = (id: string): boolean => VM_DIR.test(id);
      for (const id of [...ids].filter((i) => !valid(i))) {
        await removeDir(path.join(this.p.hostDir, id), 200).catch((e: Error) =>
          this.p.log.warn({ dir: id, err: e.message }, 'cgroup kept'),
        );
      }
      const drop = [...ids].filter((id) => valid(id) && !keep.has(id));
      if (drop.length === 0) return 0;
      const live = new Set(await childDirs(this.p.hostDir));
      const kept = [...keep].filter((id) => valid(id) && live.has(id) && s.chains.has(names(id).chain));
      const dropped = drop.map((vmId) => ({ vmId, has: this.objects(s, vmId) }));
      let script = sweepScript(this.p.facts, kept, dropped);
      if (this.p.taps) for (const id of drop) script += await this.p.taps.removeVmScript(id);
      await this.p.nft.run(script);
      for (const id of drop) {
        // A leftover process stays refused (host chain) until it exits; we never kill it.
        await removeDir(this.dir(id), 200).catch((e: Error) => this.p.log.warn({ vmId: id, err: e.message }, 'cgroup of a swept VM kept'));
      }
      this.p.log.info({ swept: drop }, 'egress filters of gone VMs removed');
      return drop.length;
    });
  }

  /**
   * Deletes the table and the host's cgroup, only when no VM is left: a hostd restart reattaches to
   * live QEMUs, and a deleted table would leave them unfiltered.
   */
  async close(o: { vmsLeft: number }): Promise<void> {
    await this.serial(async () => {
      // Processes still in the subtree (a VM the engine no longer counts) keep the table.
      if (o.vmsLeft > 0 || (await processesUnder(this.p.hostDir)) > 0) return;
      if (await this.p.nft.list(['table', 'inet', this.table])) await this.p.nft.run(`delete table inet ${this.table}\n`);
      await this.p.taps?.close();
      await removeDir(this.p.hostDir);
      await fs.rmdir(path.dirname(this.p.hostDir)).catch(() => undefined); // other hostds may still use forky/
    });
  }

  describe(): string {
    const mode = this.p.taps ? 'TAP devices (netdev ingress)' : "QEMU's sockets";
    return `nftables: table inet ${this.table}, cgroup ${this.p.hostDir}, filtering ${mode}`;
  }

  private dir(vmId: string): string {
    safeName(vmId);
    return path.join(this.p.hostDir, vmId);
  }

  private objects(s: TableState, vmId: string): VmObjects {
    const n = names(vmId);
    return {
      element: s.elements.has(vmCgroup(this.p.facts, vmId)),
      chain: s.chains.has(n.chain),
      refuse: s.chains.has(n.refuse),
      counter: s.counters.has(n.counter),
    };
  }

  private async state(): Promise<TableState> {
    const s: TableState = { elements: new Set(), chains: new Set(), counters: new Set() };
    for (const o of (await this.p.nft.list(['table', 'inet', this.table])) ?? []) {
      const chain = o.chain as { name: string } | undefined;
      const counter = o.counter as { name: string } | undefined;
      const map = o.map as { name: string; elem?: unknown[] } | undefined;
      if (chain) s.chains.add(chain.name);
      if (counter) s.counters.add(counter.name);
      if (map?.name === 'vms') for (const e of map.elem ?? []) if (Array.isArray(e) && typeof e[0] === 'string') s.elements.add(e[0]);
    }
    return s;
  }
}
