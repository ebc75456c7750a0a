import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError } from '@forky/base';
import type { GuestSession } from '@forky/agent';
import { DEVICE_SET, type Accel, type ExecResult, type MachineProfile } from '@forky/contract';
import type { Image } from '../images.js';
import type { RunningProcess, VmHandle, VmRuntime, VmSpec } from '../domain/ports.js';
import { QcowLayerStore } from './qemu/layers.js';
import { buildArgs, launchPaths, type LaunchMode } from './qemu/cmdline.js';

/**
 * A runtime that starts nothing: VMs exist only as records (and empty files), so a host can be
 * simulated many times on one machine. For measuring the scheduler's placement cost without QEMU
 * in the way (`dryRun: true`); never for running guests.
 */
export class DryRunRuntime implements VmRuntime {
  readonly accel: Accel = 'tcg';
  readonly qemuVersion = 'dry-run';
  readonly bridged = false;

  profile(memMiB: number, cpus: number, imageId: string): MachineProfile {
    return {
      accel: this.accel,
      qemuVersion: this.qemuVersion,
      machine: 'dry-run',
      cpuModel: 'none',
      cpus,
      memMiB,
      imageId,
      devices: DEVICE_SET,
    };
  }

  async boot(spec: VmSpec): Promise<VmHandle> {
    await fs.mkdir(path.dirname(spec.ram.file), { recursive: true });
    await fs.writeFile(spec.ram.file, '');
    await writeArgs(spec, 'boot');
    return handle();
  }

  async prepare(spec: VmSpec, opts: { autostart: boolean }): Promise<VmHandle> {
    await writeArgs(spec, opts.autostart ? 'autostart' : 'paused');
    return handle();
  }

  async load(): Promise<void> {}
  async waitAgent(): Promise<void> {}
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}

  async saveState(_vm: VmHandle, stateFile: string): Promise<{ stateBytes: number }> {
    await fs.mkdir(path.dirname(stateFile), { recursive: true });
    await fs.writeFile(stateFile, '');
    return { stateBytes: 0 };
  }

  async writePrivatePages(): Promise<{ bytes: number }> {
    return { bytes: 0 };
  }

  async flattenDisk(): Promise<void> {}

  async exec(): Promise<ExecResult> {
    return { exitCode: 0, stdout: '', stderr: '' };
  }

  guest(): Promise<GuestSession> {
    return Promise.reject(new ForkyError('UNAVAILABLE', 'no guest agent in a dry run'));
  }

  async quiesceGuest(): Promise<() => void> {
    return () => undefined;
  }

  async control(): Promise<string> {
    return 'ok';
  }

  async attachDisk(): Promise<void> {}
  async detachDisk(): Promise<void> {}
  async destroy(): Promise<void> {}
  async close(): Promise<void> {}

  attach(): Promise<{ handle: VmHandle; status: string }> {
    // No process outlives a dry-run hostd: its VMs are gone after a restart.
    return Promise.reject(new Error('a dry-run host has no processes to attach to'));
  }

  async processes(): Promise<RunningProcess[]> {
    return [];
  }
}

/** Layers as empty files: the chain bookkeeping runs, no qemu-img does. */
export class DryRunLayerStore extends QcowLayerStore {
  override async importImage(image: Image): Promise<string> {
    const id = `img-${image.diskSha256.slice(0, 32)}`;
    await this.#touch(id);
    return id;
  }

  override async createOverlay(id: string): Promise<void> {
    await this.#touch(id);
  }

  override async freeze(): Promise<void> {}

  async #touch(id: string): Promise<void> {
    await fs.mkdir(this.layout.layersDir(), { recursive: true });
    await fs.writeFile(this.layout.layer(id), '');
  }
}

/** A process that never exits (there is none). */
function handle(): VmHandle {
  return { pid: 0, exited: new Promise<void>(() => undefined) };
}

/**
 * Writes the QEMU command line this VM would have had (`qemu-args.json` in its run directory):
 * what a dry run shows of a VM, the GPUs passed through included.
 */
async function writeArgs(spec: VmSpec, mode: LaunchMode): Promise<void> {
  const args = buildArgs(
    spec,
    { accel: 'tcg', machine: 'pc', cpuModel: 'qemu64', sandbox: true, network: { mode: 'user' } },
    launchPaths(spec),
    mode,
  );
  await fs.mkdir(spec.runDir, { recursive: true });
  await fs.writeFile(path.join(spec.runDir, 'qemu-args.json'), JSON.stringify(args));
}
