import { newId } from '@forky/base';
import type { ChildEnv, Egress, ForkResult, Labels, LifecycleInfo, SnapshotInfo, VmInfo, VmState } from '@forky/contract';
import { lifetime, ttlMs, type Duration, type IdleOption } from './duration.js';
import {
  attach,
  exec,
  pty,
  spawn,
  startDetached,
  type AttachOptions,
  type ExecOptions,
  type ExecResult,
  type PtyOptions,
  type SpawnOptions,
} from './exec.js';
import { Files } from './files.js';
import { PortForward, type PortForwardOptions } from './port-forward.js';
import type { Process } from './process.js';
import type { CallOptions, Transport } from './transport.js';

export interface ForkOptions extends CallOptions {
  /** Children to make (default: one per `perChild` entry, else 1). */
  count?: number;
  /** Keep this VM running (a live fork; default: it stays paused, as fork() leaves a parent). */
  live?: boolean;
  /** Spread the children over every live host. */
  spread?: boolean;
  /** Return once each child's vCPUs run instead of once its agent answers. */
  until?: 'ready' | 'running';
  /** Added to every child's labels, on top of this VM's. */
  labels?: Labels;
  /** One entry per child (exactly `count`): its own labels, and an env it finds in /run/forky/env. */
  perChild?: Array<{ labels?: Labels; env?: ChildEnv }>;
  /** Every child's TTL, counted from its start (default: the source's, if it has one). */
  ttl?: Duration;
  /** Every child's idle rule (default: the source's). */
  idle?: IdleOption;
}

export interface ForkOutcome {
  /** The snapshot the children resumed from (this VM's state at the fork). */
  snapshot: SnapshotInfo;
  children: Vm[];
  result: ForkResult;
}

/**
 * One VM of the cluster. `info` is what was last seen of it; `refresh()` reads it again. Every
 * write goes under an idempotency key, so a reply lost and re-sent never does the work twice.
 */
export class Vm {
  readonly files: Files;

  /** @internal */
  constructor(
    private readonly t: Transport,
    public info: VmInfo,
  ) {
    this.files = new Files(t, info.id);
  }

  get id(): string {
    return this.info.id;
  }

  /** As last seen (`refresh()` reads it again). */
  get state(): VmState {
    return this.info.state;
  }

  /** Its TTL and idle rule, when it has either: `expiresAt`, `lastActivityAt`, `pausedBy: 'idle'` (as last seen). */
  get lifecycle(): LifecycleInfo | undefined {
    return this.info.lifecycle;
  }

  /** The template it was booted from, if any. */
  get template(): string | undefined {
    return this.info.template;
  }

  async refresh(o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.show', { id: this.id }, o));
  }

  /** Runs a command (argv array, or a shell line as a string) to its end; its exit code is in the result, not thrown. */
  exec(cmd: string | readonly string[], o: ExecOptions = {}): Promise<ExecResult> {
    return exec(this.t, this.id, cmd, o);
  }

  /** Starts a command and returns its process: iterate it for output, write() its stdin, wait() for its exit. */
  spawn(cmd: string | readonly string[], o: SpawnOptions = {}): Promise<Process> {
    return spawn(this.t, this.id, cmd, o);
  }

  /**
   * Starts `cmd` (default `/bin/sh -l`) on a pseudo-terminal of `rows` × `cols`: write() its keys
   * raw, read its screen as stdout, resize() it, wait() for its exit. As spawn() with `pty`.
   */
  pty(cmd: string | readonly string[] | undefined, o: PtyOptions): Promise<Process> {
    return pty(this.t, this.id, cmd, o);
  }

  /** Starts a command detached (no stream; it runs on by itself) and returns its pid, for attach(). */
  startDetached(cmd: string | readonly string[], o: Omit<SpawnOptions, 'stdin' | 'onEvent' | 'pty'> = {}): Promise<number> {
    return startDetached(this.t, this.id, cmd, o);
  }

  /** Follows a process of the guest agent by pid: what its buffer kept (its last 1 MiB), then, with `follow` (default), until it exits. */
  attach(pid: number, o: AttachOptions = {}): Promise<Process> {
    return attach(this.t, this.id, pid, o);
  }

  /** Forwards a local TCP port (default: any free one on 127.0.0.1) to `guestPort` inside the VM, until close(). */
  forward(
    guestPort: number,
    o: Omit<PortForwardOptions, 'vm' | 'guestPort' | 'open' | 'local'> & { host?: string; port?: number } = {},
  ): Promise<PortForward> {
    const { host = '127.0.0.1', port = 0, ...rest } = o;
    return PortForward.listen({ ...rest, vm: this.id, guestPort, local: { host, port }, open: (body) => this.t.stream('port.open', body) });
  }

  /** Forks this VM: each child resumes its exact memory, CPU and disk state, with its own identity. */
  async fork(o: ForkOptions = {}): Promise<ForkOutcome> {
    const result = await this.t.call(
      'fork',
      {
        source: this.id,
        count: o.count ?? o.perChild?.length ?? 1,
        resumeParent: o.live === true,
        spread: o.spread === true,
        until: o.until ?? 'ready',
        ...(o.labels ? { labels: o.labels } : {}),
        ...(o.perChild ? { perChild: o.perChild } : {}),
        ...lifetime(o),
        key: newId('sdkfork', 16),
      },
      o,
    );
    await this.refresh().catch(() => undefined);
    return { snapshot: result.snapshot, children: result.children.map((c) => new Vm(this.t, c)), result };
  }

  /** Freezes the VM into a snapshot (kept paused unless `resume`); `keep`: its host's retention never expires it. */
  async snapshot(o: CallOptions & { resume?: boolean; keep?: boolean } = {}): Promise<SnapshotInfo> {
    const req = { vm: this.id, resume: o.resume === true, ...(o.keep === true ? { keep: true } : {}), key: newId('sdksnap', 16) };
    const s = await this.t.call('snapshot.create', req, o);
    await this.refresh().catch(() => undefined);
    return s;
  }

  async pause(o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.pause', { id: this.id }, o));
  }

  async resume(o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.resume', { id: this.id }, o));
  }

  /** Sets where the guest may connect (`none`, `internet`, or an allow-list), live. */
  async setEgress(egress: Egress, o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.network', { id: this.id, network: { egress }, key: newId('sdknet', 16) }, o));
  }

  /** It now expires `ttl` from now (ms, or `'30m'`…), which may also shorten its life; a VM with no TTL gets one. */
  async extend(ttl: Duration, o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.extend', { id: this.id, ttlMs: ttlMs(ttl) }, o));
  }

  async destroy(o: CallOptions = {}): Promise<VmInfo> {
    return (this.info = await this.t.call('vm.destroy', { id: this.id }, o));
  }
}
