import { InvalidStateError } from '@forky/base';
import type { VmExtendRequest, VmInfo } from '@forky/contract';
import type { Host } from '../host.js';
import { stepClock } from '../identity.js';
import { extendLifetime, type Due } from '../lifetimes.js';
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

/** A pause, by the user or (`by: idle`) by the VM's idle rule; the `paused` event says which. */
async function pauseNow(host: Host, vm: VmRecord, h: VmHandle, by?: 'idle'): Promise<void> {
  await host.runtime.pause(h);
  if (by) vm.pausedBy = by;
  await host.setState(vm, 'paused');
}

/** A resume (running again clears `pausedBy`, host.ts); its clock stood still while it was paused. */
async function resumeNow(host: Host, vm: VmRecord, h: VmHandle): Promise<void> {
  await host.runtime.resume(h);
  await host.setState(vm, 'running');
  await stepClock(host.runtime, h, vm, host.log);
}

export function pause(host: Host, id: string): Promise<VmInfo> {
  return onVm(host, id, 'pause', (vm, h) => pauseNow(host, vm, h));
}

export function resume(host: Host, id: string): Promise<VmInfo> {
  return onVm(host, id, 'resume', (vm, h) => resumeNow(host, vm, h));
}

/** Activity on a VM (lifetimes.ts): in memory, written now and then, under its lock so a destroyed VM is never written back. */
export function touch(host: Host, id: string): void {
  const vm = host.vms.get(id);
  if (!vm || !host.lifetimes.touch(vm)) return;
  void host.lock
    .run(id, async () => {
      if (host.vms.get(id) === vm && vm.state !== 'destroying' && vm.state !== 'destroyed') await host.persist(vm);
    })
    .catch((err: unknown) => host.log.warn({ err, vm: id }, 'could not write the VM its activity'));
}

/**
 * An exec, guest call or stream reaching a VM: activity, and a VM its idle rule paused is resumed
 * first, as `vm.resume` does. One paused by its user is left so (the caller refuses as before).
 */
export async function wake(host: Host, id: string): Promise<void> {
  touch(host, id);
  const vm = host.vms.get(id);
  if (vm?.pausedBy !== 'idle') return;
  await host.lock.run(id, async () => {
    if (host.vms.get(id) !== vm || vm.pausedBy !== 'idle' || vm.state !== 'paused') return;
    await resumeNow(host, vm, host.handle(vm));
    host.log.info({ vm: id }, 'vm resumed on touch (its idle rule had paused it)');
  });
}

/** `vm.extend`: the VM expires `ttlMs` from now (sooner or later than before). */
export function extend(host: Host, req: VmExtendRequest): Promise<VmInfo> {
  host.vm(req.id);
  return host.lock.run(req.id, async () => {
    const vm = host.vm(req.id);
    if (vm.state === 'destroying' || vm.state === 'destroyed')
      throw new InvalidStateError(`cannot extend VM ${vm.id}: it is ${vm.state}`, { id: vm.id, state: vm.state, op: 'extend' });
    extendLifetime(vm, req.ttlMs);
    // Persisting re-arms the host's timer.
    await host.persist(vm);
    return host.info(vm);
  });
}

/**
 * What a VM's TTL or idle rule asks, now due (lifetimes.ts): `expired` then the engine's destroy
 * (`destroy`, so the host's change is told and `destroyed` follows), or an idle pause under its
 * lock. `later` for a VM an operation holds: tried again shortly.
 */
export async function lifetimeDue(
  host: Host,
  vm: VmRecord,
  due: Due,
  announce: boolean,
  destroy: (id: string) => Promise<unknown>,
): Promise<'done' | 'later'> {
  if (host.vms.get(vm.id) !== vm) return 'done';
  if (due.what === 'idle' && due.then === 'pause') {
    await vm.settling;
    return host.lock.run(vm.id, async (): Promise<'done'> => {
      // Touched while the lock was waited for, or changed by another operation: nothing to do now.
      if (host.vms.get(vm.id) !== vm || vm.state !== 'running' || !vm.idle) return 'done';
      if (vm.lastActivityAt + vm.idle.afterMs > Date.now()) return 'done';
      await pauseNow(host, vm, host.handle(vm), 'idle');
      host.log.info({ vm: vm.id, afterMs: vm.idle.afterMs }, 'vm paused by its idle rule');
      return 'done';
    });
  }
  if (vm.state === 'booting' || vm.state === 'restoring' || vm.state === 'snapshotting' || vm.state === 'destroying') return 'later';
  const reason = due.what === 'idle' ? 'idle' : undefined;
  if (announce) host.events.expired(vm, reason);
  host.log.info({ vm: vm.id, reason: reason ?? 'ttl', state: vm.state }, 'vm expired: destroying it');
  await destroy(vm.id);
  return 'done';
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
