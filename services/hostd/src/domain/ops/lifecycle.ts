import type { VmInfo } from '@forky/contract';
import type { Host } from '../host.js';
import { stepClock } from '../identity.js';
import type { VmHandle } from '../ports.js';
import type { VmRecord } from '../records.js';
import { assertAllowed, type VmOp } from '../state.js';
import { collectImages } from './images.js';

/** Runs `fn` on a VM under its lock, once the state machine allows `op`. */
async function onVm(host: Host, id: string, op: VmOp, fn: (vm: VmRecord, h: VmHandle) => Promise<void>): Promise<VmInfo> {
  // A child still settling is waited for outside the lock: one that fails to settle is destroyed, which takes the lock.
  await host.vm(id).settling;
  return host.lock.run(id, async () => {
    const vm = host.vm(id);
    assertAllowed(id, vm.state, op);
    await fn(vm, host.handle(vm));
    return host.info(vm);
  });
}

export function pause(host: Host, id: string): Promise<VmInfo> {
  return onVm(host, id, 'pause', async (vm, h) => {
    await host.runtime.pause(h);
    await host.setState(vm, 'paused');
  });
}

export function resume(host: Host, id: string): Promise<VmInfo> {
  return onVm(host, id, 'resume', async (vm, h) => {
    await host.runtime.resume(h);
    await host.setState(vm, 'running');
    // Its clock stood still while it was paused.
    await stepClock(host.runtime, h, vm, host.log);
  });
}

/**
 * Stops a VM and removes it and its files; the zero pages it filled in a snapshot's RAM go back,
 * unless that file is `ramGoing`, which its caller removes next (a scan of it would be wasted).
 */
export function destroyVm(host: Host, id: string, opts: { ramGoing?: string } = {}): Promise<VmInfo> {
  host.vm(id);
  return host.lock.run(id, async () => {
    const vm = host.vm(id);
    assertAllowed(id, vm.state, 'destroy');
    await host.setState(vm, 'destroying');
    await host.teardown(vm);
    if (!vm.ram.shared && vm.ram.file !== opts.ramGoing) await host.ram.reclaim(vm.ram.file);
    vm.state = 'destroyed';
    host.vms.delete(id);
    await host.dir.unregister('vm', id).catch((err: unknown) => host.log.warn({ err, vm: id }, 'locator delete failed'));
    host.log.info({ vm: id }, 'vm destroyed');
    // A child whose chain was flattened may outlive every snapshot of its (fetched) image.
    await collectImages(host);
    return host.info(vm);
  });
}
