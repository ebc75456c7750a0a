import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError, withDeadline, type Logger } from '@forky/base';
import { GuestAgentClient, QmpClient } from '@forky/qemu';
import { connectAgent, SessionCache, type GuestSession } from '@forky/agent';
import { DEVICE_SET, type Accel, type ExecResult, type MachineProfile } from '@forky/contract';
import type { AppDisk, NetworkFilter, RunningProcess, SelfForkListener, VmHandle, VmRuntime, VmSpec } from '../../domain/ports.js';
import { appBlockdev, appDevice, buildArgs, launchPaths, vmSocket as sock, type LaunchMode, type MachineOptions } from './cmdline.js';
import { findQemuProcesses, killAndWait, killGroup, launchQemu, watchProcess, type QemuProcess } from './process.js';
import { listenForState, loadState } from './migration.js';
import { copyPrivatePages } from './private-pages.js';
import { askLine } from './control.js';
import { createTap, removeTap, tapName } from './tap.js';
import { handOver, type RunAs } from './run-as.js';
import { ForkPort, ForkPorts } from './fork-port.js';

/**
 * The most output (stdout and stderr, UTF-8) an exec returns: the reply must fit NATS's 1 MiB
 * max_payload; 64 KiB is left for the rest of the reply and its headers.
 */
const EXEC_MAX_OUTPUT = (1 << 20) - (64 << 10);
/** Connecting to forky-agent and its HELLO_ACK. */
const AGENT_CONNECT_MS = 10_000;
/** An agent session quiet this long is probed before reuse (the agent may have been restarted in the guest)… */
const AGENT_QUIET_MS = 3000;
/**
 * …and must answer within this, or a new session (a new HELLO) is made. Generous: a new session
 * ends the old one's streams, and a guest busy under TCG may take a while to schedule its agent.
 */
const AGENT_PROBE_MS = 5000;

export interface QemuVm extends VmHandle {
  proc: QemuProcess;
  qmp: QmpClient;
  agent: GuestAgentClient;
  spec: VmSpec;
  /** Its self-fork port; absent for a process an older hostd started without one. */
  fork?: ForkPort;
}

export interface QemuRuntimeOptions extends Omit<MachineOptions, 'runAs'> {
  runAs?: RunAs;
  binary: string;
  /** QEMU's CPU niceness (config.ts qemu.nice). */
  nice?: number;
  qemuVersion: string;
  logger: Logger;
  /** Puts each TAP device behind its VM's egress filter (TAP mode: QEMU's own sockets are not the path). */
  filter?: Pick<NetworkFilter, 'bindDevice' | 'unbindDevice'>;
}

/**
 * VmRuntime on QEMU: one process per VM, QMP for control, the guest agent for the inside.
 * Device state is saved with `xen-save-devices-state`, which writes every device but no RAM
 * block, whatever the RAM's sharing: the RAM lives in files children map copy-on-write.
 */
export class QemuRuntime implements VmRuntime<QemuVm> {
  readonly accel: Accel;
  readonly qemuVersion: string;
  readonly bridged: boolean;
  /** One forky-agent session per VM process, made on first use and again once it has closed or stopped answering. */
  readonly #guests: SessionCache<QemuVm>;
  /** Where self-fork lines go (the engine's); until it is set, lines are dropped. */
  #onSelfFork: SelfForkListener = async () => undefined;
  readonly #ports = new ForkPorts();

  constructor(private readonly opts: QemuRuntimeOptions) {
    this.accel = opts.accel;
    this.qemuVersion = opts.qemuVersion;
    this.bridged = opts.network.mode === 'tap';
    this.#guests = new SessionCache({ quietMs: AGENT_QUIET_MS, probeMs: AGENT_PROBE_MS, log: opts.logger.child({ component: 'agent' }) });
  }

  profile(memMiB: number, cpus: number, imageId: string): MachineProfile {
    const { machine, cpuModel } = this.opts;
    return { accel: this.accel, qemuVersion: this.qemuVersion, machine, cpuModel, cpus, memMiB, imageId, devices: DEVICE_SET };
  }

  async boot(spec: VmSpec, timeoutMs: number): Promise<QemuVm> {
    const deadline = Date.now() + timeoutMs;
    const vm = await this.#start(spec, 'boot', timeoutMs);
    try {
      await vm.agent.sync(Math.max(1, deadline - Date.now()));
      return vm;
    } catch (e) {
      await this.destroy(vm);
      throw withSerialTail(e, spec);
    }
  }

  async prepare(spec: VmSpec, opts: { autostart: boolean; timeoutMs: number }): Promise<QemuVm> {
    const vm = await this.#start(spec, opts.autostart ? 'autostart' : 'paused', opts.timeoutMs);
    try {
      await listenForState(vm.qmp, sock(spec, 'mig'));
      return vm;
    } catch (e) {
      await this.destroy(vm);
      throw e;
    }
  }

  async load(vm: QemuVm, stateFile: string, timeoutMs: number): Promise<void> {
    await loadState(vm.qmp, sock(vm.spec, 'mig'), stateFile, timeoutMs);
  }

  async waitAgent(vm: QemuVm, timeoutMs: number): Promise<void> {
    await vm.agent.sync(timeoutMs).catch((e: unknown) => {
      throw withSerialTail(e, vm.spec);
    });
  }

  async pause(vm: QemuVm): Promise<void> {
    await vm.qmp.execute('stop');
  }

  async resume(vm: QemuVm): Promise<void> {
    // `cont` also takes back disks a save let go of.
    await vm.qmp.execute('cont');
  }

  async saveState(vm: QemuVm, stateFile: string): Promise<{ stateBytes: number }> {
    await fs.mkdir(path.dirname(stateFile), { recursive: true });
    await handOver(path.dirname(stateFile), this.opts.runAs);
    // live: the disks are flushed and let go of, so the successor can take them.
    await vm.qmp.execute('xen-save-devices-state', { filename: stateFile, live: true }, { timeoutMs: 30_000 });
    return { stateBytes: (await fs.stat(stateFile)).size };
  }

  async writePrivatePages(vm: QemuVm, file: string, opts?: { precopy?: boolean }): Promise<{ bytes: number }> {
    return copyPrivatePages(vm.pid, vm.spec.ram.file, file, opts);
  }

  async flattenDisk(vm: QemuVm, baseFile: string, timeoutMs: number): Promise<void> {
    const job = `flatten${Date.now()}`;
    const done = vm.qmp.waitForEvent('BLOCK_JOB_COMPLETED', (e) => e.data?.device === job, timeoutMs);
    await vm.qmp.execute('block-stream', { 'job-id': job, device: 'disk0', base: baseFile, 'auto-dismiss': true });
    const ev = await done;
    if (ev.data?.error) throw new ForkyError('QEMU', `flattening the disk of VM ${vm.spec.id} failed: ${String(ev.data.error)}`);
  }

  control(vm: QemuVm, line: string, timeoutMs: number): Promise<string> {
    return askLine(sock(vm.spec, 'ctl'), line, timeoutMs);
  }

  guest(vm: QemuVm): Promise<GuestSession> {
    return this.#guests.get(vm, () => {
      const log = this.opts.logger.child({ vm: vm.spec.id, generation: vm.spec.generation, component: 'agent' });
      return connectAgent(launchPaths(vm.spec).agentSocket, { timeoutMs: AGENT_CONNECT_MS, log });
    });
  }

  /** Rejects (UNAVAILABLE) when the agent leaves requests unanswered past `timeoutMs`: the snapshot then fails. */
  async quiesceGuest(vm: QemuVm, timeoutMs: number): Promise<() => void> {
    // No session, no request in flight: nothing to connect to just to quiesce it.
    const session = await this.#guests.current(vm)?.catch(() => undefined);
    return session ? session.quiesce(timeoutMs) : () => undefined;
  }

  /** Ends every agent session (hostd stops; the VMs and what their agents run go on). */
  async close(): Promise<void> {
    this.#guests.closeAll();
    this.#ports.close();
  }

  async exec(vm: QemuVm, cmd: readonly string[], opts: { input?: string; timeoutMs: number }): Promise<ExecResult> {
    return vm.agent.exec(cmd, { ...opts, maxOutputBytes: EXEC_MAX_OUTPUT });
  }

  async attachDisk(vm: QemuVm, disk: AppDisk, timeoutMs: number): Promise<void> {
    await vm.qmp.execute('blockdev-add', appBlockdev(disk), { timeoutMs });
    try {
      await vm.qmp.execute('device_add', appDevice(disk), { timeoutMs });
    } catch (e) {
      await vm.qmp.execute('blockdev-del', { 'node-name': `app${disk.slot}` }, { timeoutMs }).catch(() => undefined);
      throw e;
    }
  }

  async detachDisk(vm: QemuVm, slot: number, timeoutMs: number): Promise<void> {
    const id = `app${slot}`;
    // The guest must agree to the unplug (ACPI eject); the event says it has.
    const gone = vm.qmp.waitForEvent('DEVICE_DELETED', (e) => e.data?.device === id, timeoutMs);
    gone.catch(() => undefined);
    await vm.qmp.execute('device_del', { id }, { timeoutMs });
    await gone;
    await vm.qmp.execute('blockdev-del', { 'node-name': id }, { timeoutMs });
  }

  onSelfFork(listener: SelfForkListener): void {
    this.#onSelfFork = listener;
  }

  async selfForkReply(vm: QemuVm, line: string): Promise<void> {
    if (!vm.fork) throw new ForkyError('INVALID_STATE', `VM ${vm.spec.id} has no self-fork port (started by an older hostd)`);
    await vm.fork.write(line);
  }

  /** Its self-fork port: connected before the process loads state (a guest blocked reading it must never see the host leave). */
  #connectFork(spec: VmSpec, timeoutMs: number): Promise<ForkPort> {
    return this.#ports.connect(sock(spec, 'fork'), spec, (vm, line) => this.#onSelfFork(vm, line), this.opts.logger, timeoutMs);
  }

  async destroy(vm: QemuVm): Promise<void> {
    vm.agent?.close();
    vm.fork?.close();
    // Its streams end (GONE) now, not when the socket notices QEMU is gone.
    this.#guests.close(vm);
    if (!vm.proc.isExited()) {
      await vm.qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
      const gone = await withDeadline(vm.proc.exited, 3000, 'QEMU quit').then(
        () => true,
        () => false,
      );
      if (!gone) {
        killGroup(vm.pid, 'SIGKILL');
        await withDeadline(vm.proc.exited, 5000, 'QEMU kill');
      }
    }
    vm.qmp.close();
    if (this.opts.network.mode === 'tap') await this.#removeTap(tapName(vm.spec.id, vm.spec.generation));
  }

  async #removeTap(tap: string): Promise<void> {
    await this.opts.filter?.unbindDevice(tap);
    await removeTap(tap);
  }

  async attach(spec: VmSpec, pid: number, timeoutMs: number): Promise<{ handle: QemuVm; status: string }> {
    const qmp = await QmpClient.connect(sock(spec, 'qmpd'), { handshakeTimeoutMs: timeoutMs });
    try {
      const { status } = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs });
      const agent = await GuestAgentClient.connect(sock(spec, 'qga'), timeoutMs);
      const proc = watchProcess(pid, qmp);
      // Not connected (or an older hostd's process with none): logged, tried again with a deadline. A request in flight is told lost by the engine.
      const fork = await this.#connectFork(spec, timeoutMs).catch((e: unknown) => e as Error);
      const vm: QemuVm = { pid, exited: proc.exited, proc, qmp, agent, spec, ...(fork instanceof ForkPort ? { fork } : {}) };
      const again = (): false | Promise<void> => !proc.isExited() && this.#connectFork(spec, timeoutMs).then((p) => void (vm.fork = p));
      if (!(fork instanceof ForkPort)) this.#ports.retry(fork, again, this.opts.logger.child({ vm: spec.id, component: 'self-fork' }));
      return { handle: vm, status };
    } catch (e) {
      qmp.close();
      throw e;
    }
  }

  async processes(vmsDir: string): Promise<RunningProcess[]> {
    return (await findQemuProcesses(vmsDir)).map((p) => ({ ...p, kill: () => killAndWait(p.pid) }));
  }

  async #start(spec: VmSpec, mode: LaunchMode, timeoutMs: number): Promise<QemuVm> {
    await fs.mkdir(spec.runDir, { recursive: true });
    // QEMU listens for device state here after it has dropped root.
    await handOver(spec.runDir, this.opts.runAs);
    if (spec.ram.shared) await fs.mkdir(path.dirname(spec.ram.file), { recursive: true });
    const paths = launchPaths(spec);
    const args = buildArgs(spec, this.opts, paths, mode);
    const log = this.opts.logger.child({ vm: spec.id, generation: spec.generation });
    const tap = this.opts.network.mode === 'tap' ? tapName(spec.id, spec.generation) : undefined;
    if (tap && this.opts.network.mode === 'tap') {
      await createTap(tap, this.opts.network.bridge);
      // Behind its filter before QEMU can send a frame through it.
      await this.opts.filter?.bindDevice(spec.id, tap, spec.mac).catch(async (e: unknown) => {
        await this.#removeTap(tap);
        throw e;
      });
    }
    let proc: QemuProcess;
    try {
      const { binary, nice } = this.opts;
      proc = await launchQemu(binary, args, paths.qmpSocket, path.join(spec.runDir, 'qemu.log'), timeoutMs, log, spec.net.scope, nice);
    } catch (e) {
      if (tap) await this.#removeTap(tap);
      throw e;
    }
    try {
      const agent = await GuestAgentClient.connect(paths.qgaSocket, timeoutMs);
      const fork = await this.#connectFork(spec, timeoutMs).catch((e: unknown) => {
        agent.close();
        throw e;
      });
      return { pid: proc.pid, exited: proc.exited, proc, qmp: proc.qmp, agent, spec, fork };
    } catch (e) {
      killGroup(proc.pid, 'SIGKILL');
      await proc.exited;
      if (tap) await this.#removeTap(tap);
      throw e;
    }
  }
}

/** A guest that never answered: the last lines of its console say why. */
function withSerialTail(e: unknown, spec: VmSpec): unknown {
  if (!(e instanceof ForkyError) || e.code !== 'TIMEOUT') return e;
  return new ForkyError('TIMEOUT', `${e.message} (VM ${spec.id}; see ${path.join(spec.runDir, 'serial.log')})`, { cause: e });
}
