import type { GuestSession } from '@forky/agent';
import type { ExecResult, MachineProfile } from '@forky/contract';
import type { VmHandle, VmRuntime, VmSpec } from '@forky/hostd';
import type { SelfForkListener } from '@forky/hostd/internal';
import { FaultPlan, type Call } from './fault-plan.js';

type Status = 'waiting' | 'running' | 'paused' | 'gone';

/** One simulated VM process: what the engine holds as its handle. */
export class Proc implements VmHandle {
  status: Status;
  readonly exited: Promise<void>;
  #exit!: () => void;

  constructor(
    readonly pid: number,
    readonly spec: VmSpec,
    status: Status,
    /** A prepared process runs once its state is loaded (otherwise it stays paused). */
    readonly autostart: boolean,
    readonly inner: VmHandle,
  ) {
    this.status = status;
    this.exited = new Promise<void>((resolve) => (this.#exit = resolve));
  }

  get alive(): boolean {
    return this.status !== 'gone';
  }

  end(): void {
    this.status = 'gone';
    this.#exit();
  }
}

/**
 * A dry-run runtime (any VmRuntime, in practice hostd's DryRunRuntime) that fails the calls a
 * FaultPlan arms and records every call. Each process gets a pid of its own and a status, so a
 * test can tell which process is the VM and that none leaked. Processes outlive an engine: a
 * second engine on the same runtime and directories finds them (`processes`, `attach`), as a
 * restarted hostd finds QEMU still running.
 */
export class FaultRuntime implements VmRuntime {
  readonly procs: Proc[] = [];
  #nextPid = 1000;
  /** Every line hostd wrote to a process's self-fork port, in order. */
  readonly selfForkReplies: Array<{ vmId: string; generation: number; line: string }> = [];
  #selfFork: SelfForkListener | undefined;
  #onReply: Array<() => void> = [];

  constructor(
    private readonly inner: VmRuntime,
    readonly plan: FaultPlan = new FaultPlan(),
  ) {}

  get accel(): VmRuntime['accel'] {
    return this.inner.accel;
  }
  get qemuVersion(): string {
    return this.inner.qemuVersion;
  }
  get bridged(): boolean {
    return this.inner.bridged;
  }

  /** Processes still running (or waiting for state), optionally of one VM. */
  live(vmId?: string): Proc[] {
    return this.procs.filter((p) => p.alive && (vmId === undefined || p.spec.id === vmId));
  }

  proc(pid: number | undefined): Proc | undefined {
    return this.procs.find((p) => p.pid === pid);
  }

  /** The process exits on its own, as QEMU does when it crashes. */
  crash(pid: number): void {
    this.proc(pid)?.end();
  }

  profile(memMiB: number, cpus: number, imageId: string): MachineProfile {
    return this.inner.profile(memMiB, cpus, imageId);
  }

  async boot(spec: VmSpec, timeoutMs: number): Promise<VmHandle> {
    await this.#check('boot', [spec, timeoutMs], spec);
    return this.#spawn(spec, 'running', true, await this.inner.boot(spec, timeoutMs));
  }

  async prepare(spec: VmSpec, opts: { autostart: boolean; timeoutMs: number }): Promise<VmHandle> {
    await this.#check('prepare', [spec, opts], spec);
    return this.#spawn(spec, 'waiting', opts.autostart, await this.inner.prepare(spec, opts));
  }

  async load(vm: VmHandle, stateFile: string, timeoutMs: number): Promise<void> {
    const p = await this.#checkVm('load', vm, [stateFile, timeoutMs]);
    await this.inner.load(p.inner, stateFile, timeoutMs);
    p.status = p.autostart ? 'running' : 'paused';
  }

  async waitAgent(vm: VmHandle, timeoutMs: number): Promise<void> {
    const p = await this.#checkVm('waitAgent', vm, [timeoutMs]);
    await this.inner.waitAgent(p.inner, timeoutMs);
  }

  async pause(vm: VmHandle): Promise<void> {
    const p = await this.#checkVm('pause', vm, []);
    await this.inner.pause(p.inner);
    p.status = 'paused';
  }

  async resume(vm: VmHandle): Promise<void> {
    const p = await this.#checkVm('resume', vm, []);
    await this.inner.resume(p.inner);
    p.status = 'running';
  }

  async saveState(vm: VmHandle, stateFile: string): Promise<{ stateBytes: number }> {
    const p = await this.#checkVm('saveState', vm, [stateFile]);
    return this.inner.saveState(p.inner, stateFile);
  }

  async writePrivatePages(vm: VmHandle, file: string, opts?: { precopy?: boolean }): Promise<{ bytes: number }> {
    const p = await this.#checkVm('writePrivatePages', vm, opts ? [file, opts] : [file]);
    return this.inner.writePrivatePages(p.inner, file, opts);
  }

  async flattenDisk(vm: VmHandle, baseFile: string, timeoutMs: number): Promise<void> {
    const p = await this.#checkVm('flattenDisk', vm, [baseFile, timeoutMs]);
    await this.inner.flattenDisk(p.inner, baseFile, timeoutMs);
  }

  async exec(vm: VmHandle, cmd: readonly string[], opts: { input?: string; timeoutMs: number }): Promise<ExecResult> {
    const p = await this.#checkVm('exec', vm, [cmd, opts]);
    return this.inner.exec(p.inner, cmd, opts);
  }

  async guest(vm: VmHandle): Promise<GuestSession> {
    const p = await this.#checkVm('guest', vm, []);
    return this.inner.guest(p.inner);
  }

  async quiesceGuest(vm: VmHandle, timeoutMs: number): Promise<() => void> {
    const p = await this.#checkVm('quiesceGuest', vm, [timeoutMs]);
    return this.inner.quiesceGuest(p.inner, timeoutMs);
  }

  async control(vm: VmHandle, line: string, timeoutMs: number): Promise<string> {
    const p = await this.#checkVm('control', vm, [line, timeoutMs]);
    return this.inner.control(p.inner, line, timeoutMs);
  }

  async attachDisk(vm: VmHandle, disk: Parameters<VmRuntime['attachDisk']>[1], timeoutMs: number): Promise<void> {
    const p = await this.#checkVm('attachDisk', vm, [disk, timeoutMs]);
    await this.inner.attachDisk(p.inner, disk, timeoutMs);
  }

  async detachDisk(vm: VmHandle, slot: number, timeoutMs: number): Promise<void> {
    const p = await this.#checkVm('detachDisk', vm, [slot, timeoutMs]);
    await this.inner.detachDisk(p.inner, slot, timeoutMs);
  }

  async destroy(vm: VmHandle): Promise<void> {
    const p = await this.#checkVm('destroy', vm, []);
    await this.inner.destroy(p.inner);
    p.end();
  }

  // Not a fault point: a hostd stopping releases what it holds whatever the plan says.
  async close(): Promise<void> {
    await this.inner.close();
  }

  async attach(spec: VmSpec, pid: number, timeoutMs: number): Promise<{ handle: VmHandle; status: string }> {
    await this.#check('attach', [spec, pid, timeoutMs], spec);
    const p = this.procs.find((x) => x.alive && x.pid === pid && x.spec.id === spec.id && x.spec.generation === spec.generation);
    if (!p) throw new Error(`no process ${pid} of ${spec.id} (generation ${spec.generation}) to attach to`);
    return { handle: p, status: p.status === 'running' ? 'running' : 'paused' };
  }

  async processes(vmsDir: string): Promise<Awaited<ReturnType<VmRuntime['processes']>>> {
    await this.#check('processes', [vmsDir]);
    return this.live()
      .filter((p) => p.spec.runDir.startsWith(`${vmsDir}/`))
      .map((p) => ({ pid: p.pid, vmId: p.spec.id, generation: p.spec.generation, kill: async () => p.end() }));
  }

  onSelfFork(listener: SelfForkListener): void {
    this.#selfFork = listener;
  }

  async selfForkReply(vm: VmHandle, line: string): Promise<void> {
    const p = await this.#checkVm('selfForkReply', vm, [line]);
    this.selfForkReplies.push({ vmId: p.spec.id, generation: p.spec.generation, line });
    for (const f of this.#onReply) f();
  }

  /** Resolves once VM `vmId` has been written `n` replies (rejects after `timeoutMs`). */
  waitReplies(vmId: string, n: number, timeoutMs = 2000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.repliesTo(vmId).length < n) return;
        clearTimeout(timer);
        this.#onReply = this.#onReply.filter((f) => f !== check);
        resolve();
      };
      const timer = setTimeout(() => reject(new Error(`${vmId} got no ${n} replies within ${timeoutMs} ms`)), timeoutMs);
      this.#onReply.push(check);
      check();
    });
  }

  /** The guest of VM `vmId`'s newest live process sends `line` (or a line over the limit) on its self-fork port. */
  async guestSends(vmId: string, line: string | { tooLong: true }): Promise<void> {
    const p = this.live(vmId).at(-1);
    if (!p || !this.#selfFork) throw new Error(`no live process of ${vmId}, or no self-fork listener`);
    await this.#selfFork({ id: vmId, generation: p.spec.generation }, typeof line === 'string' ? { line } : line);
  }

  /** The replies written to VM `vmId`'s ports, parsed. */
  repliesTo(vmId: string): unknown[] {
    return this.selfForkReplies.filter((r) => r.vmId === vmId).map((r) => JSON.parse(r.line) as unknown);
  }

  #spawn(spec: VmSpec, status: Status, autostart: boolean, inner: VmHandle): Proc {
    const p = new Proc(this.#nextPid++, spec, status, autostart, inner);
    this.procs.push(p);
    return p;
  }

  async #checkVm(method: string, vm: VmHandle, args: unknown[]): Promise<Proc> {
    const p = this.procs.find((x) => x === vm);
    if (!p) throw new Error(`runtime.${method}: a handle this runtime never made`);
    // A call on a process that is gone is the engine's bug, not a fault to inject.
    if (!p.alive && method !== 'destroy') throw new Error(`runtime.${method} on process ${p.pid} of ${p.spec.id}, which is gone`);
    await this.#check(method, [vm, ...args], p.spec);
    return p;
  }

  async #check(method: string, args: unknown[], spec?: VmSpec): Promise<void> {
    const c: Call = { call: `runtime.${method}`, args, ...(spec ? { vmId: spec.id, generation: spec.generation } : {}) };
    const failure = this.plan.check(c);
    if (failure) await failure;
  }
}
