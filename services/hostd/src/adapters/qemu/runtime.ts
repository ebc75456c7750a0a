import fs from 'node:fs/promises';
import { ForkyError, checkSocketPath, withDeadline, type Logger } from '@forky/base';
import { GuestAgentClient, type QmpClient } from '@forky/qemu';
import type { Accel, ExecResult, MachineProfile } from '@forky/contract';
import type { FreezeResult, VmHandle, VmRuntime, VmSpec } from '../../domain/ports.js';
import { buildArgs, type MachineOptions } from './cmdline.js';
import { killGroup, launchQemu, type QemuProcess } from './process.js';
import { loadState, saveState } from './migration.js';
import path from 'node:path';

interface QemuVm extends VmHandle {
  proc: QemuProcess;
  qmp: QmpClient;
  agent: GuestAgentClient;
  spec: VmSpec;
  /** The block node at the top of the disk chain: disk0 at start, the newest overlay after a freeze. */
  topNode: string;
  overlays: number;
}

export interface QemuRuntimeOptions extends MachineOptions {
  binary: string;
  qemuVersion: string;
  logger: Logger;
}

/** VmRuntime on QEMU: one process per VM, QMP for control, the guest agent for the inside. */
export class QemuRuntime implements VmRuntime {
  readonly accel: Accel;
  readonly qemuVersion: string;

  constructor(private readonly opts: QemuRuntimeOptions) {
    this.accel = opts.accel;
    this.qemuVersion = opts.qemuVersion;
  }

  profile(memMiB: number, cpus: number, imageId: string): MachineProfile {
    return { accel: this.accel, qemuVersion: this.qemuVersion, machine: this.opts.machine, cpuModel: this.opts.cpuModel, cpus, memMiB, imageId };
  }

  async boot(spec: VmSpec, timeoutMs: number): Promise<VmHandle> {
    const deadline = Date.now() + timeoutMs;
    const vm = await this.#start(spec, false, timeoutMs);
    try {
      await vm.agent.sync(Math.max(1, deadline - Date.now()));
      return vm;
    } catch (e) {
      await this.destroy(vm);
      throw withSerialTail(e, spec);
    }
  }

  async restore(spec: VmSpec, stateFile: string, timeoutMs: number): Promise<VmHandle> {
    const deadline = Date.now() + timeoutMs;
    const vm = await this.#start(spec, true, timeoutMs);
    try {
      await loadState(vm.qmp, sock(spec, 'mig'), stateFile, Math.max(1, deadline - Date.now()));
      await vm.qmp.execute('cont');
      await vm.agent.sync(Math.max(1, deadline - Date.now()));
      return vm;
    } catch (e) {
      await this.destroy(vm);
      throw withSerialTail(e, spec);
    }
  }

  async pause(h: VmHandle): Promise<void> {
    await (h as QemuVm).qmp.execute('stop');
  }

  async resume(h: VmHandle): Promise<void> {
    await (h as QemuVm).qmp.execute('cont');
  }

  async switchDisk(h: VmHandle, newDiskFile: string): Promise<void> {
    const vm = h as QemuVm;
    // The overlay was made by qemu-img with a relative backing name; blockdev-snapshot keeps it.
    const overlay = `ov${++vm.overlays}`;
    await vm.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': overlay, file: { driver: 'file', filename: newDiskFile }, backing: null });
    await vm.qmp.execute('blockdev-snapshot', { node: vm.topNode, overlay });
    vm.topNode = overlay;
  }

  async saveState(h: VmHandle, stateFile: string): Promise<FreezeResult> {
    const vm = h as QemuVm;
    return { stateBytes: await saveState(vm.qmp, sock(vm.spec, 'mig'), stateFile, 30_000) };
  }

  async exec(h: VmHandle, cmd: readonly string[], opts: { input?: string; timeoutMs: number }): Promise<ExecResult> {
    return (h as QemuVm).agent.exec(cmd, opts);
  }

  async destroy(h: VmHandle): Promise<void> {
    const vm = h as QemuVm;
    vm.agent?.close();
    if (!vm.proc.isExited()) {
      await vm.qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
      const gone = await withDeadline(vm.proc.exited, 3000, 'QEMU quit').then(() => true, () => false);
      if (!gone) {
        killGroup(vm.pid, 'SIGKILL');
        await withDeadline(vm.proc.exited, 5000, 'QEMU kill');
      }
    }
    vm.qmp.close();
  }

  async #start(spec: VmSpec, incoming: boolean, timeoutMs: number): Promise<QemuVm> {
    await fs.mkdir(spec.runDir, { recursive: true });
    if (spec.ram.shared) await fs.mkdir(path.dirname(spec.ram.file), { recursive: true });
    const paths = { qmpSocket: sock(spec, 'qmp'), qgaSocket: sock(spec, 'qga'), serialLog: path.join(spec.runDir, 'serial.log') };
    const args = buildArgs(spec, this.opts, paths, incoming);
    const log = this.opts.logger.child({ vm: spec.id });
    const proc = await launchQemu(this.opts.binary, args, paths.qmpSocket, path.join(spec.runDir, 'qemu.log'), timeoutMs, log);
    try {
      const agent = await GuestAgentClient.connect(paths.qgaSocket, timeoutMs);
      return { pid: proc.pid, exited: proc.exited, proc, qmp: proc.qmp, agent, spec, topNode: 'disk0', overlays: 0 };
    } catch (e) {
      killGroup(proc.pid, 'SIGKILL');
      await proc.exited;
      throw e;
    }
  }
}

function sock(spec: VmSpec, name: string): string {
  return checkSocketPath(path.join(spec.runDir, `${name}.sock`));
}

/** A guest that never answered: the last lines of its console say why. */
function withSerialTail(e: unknown, spec: VmSpec): unknown {
  if (!(e instanceof ForkyError) || e.code !== 'TIMEOUT') return e;
  return new ForkyError('TIMEOUT', `${e.message} (VM ${spec.id}; see ${path.join(spec.runDir, 'serial.log')})`, { cause: e });
}
