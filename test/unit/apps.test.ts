import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CapacityError, ValidationError, createLogger } from '@forky/base';
import { AppMount } from '@forky/contract';
import { AppMounter, type AppDevice, type VmHandle, type VmRuntime } from '@forky/hostd/internal';
import { parseAppSpec } from '@forky/cli';

const L1 = '1'.repeat(64);
const L2 = '2'.repeat(64);
const log = createLogger({ level: 'silent', name: 'test' });

/** A runtime of our own that records what would reach QEMU and the guest. */
function fakeRuntime(failGuest?: RegExp): { runtime: VmRuntime; calls: string[] } {
  const calls: string[] = [];
  const runtime = {
    attachDisk: async (_h: VmHandle, d: { slot: number; serial: string }) => void calls.push(`attach ${d.slot} ${d.serial}`),
    detachDisk: async (_h: VmHandle, slot: number) => void calls.push(`detach ${slot}`),
    exec: async (_h: VmHandle, cmd: readonly string[]) => {
      calls.push(cmd.join(' '));
      return failGuest?.test(cmd.join(' ')) ? { exitCode: 2, stdout: '', stderr: 'no disk' } : { exitCode: 0, stdout: '', stderr: '' };
    },
  } as unknown as VmRuntime;
  return { runtime, calls };
}
const layers = {
  ensure: async () => ({ fetched: false, receivedBytes: 0 }),
  path: (d: string) => `/apps/${d}.ext4`,
  size: async () => 0,
  list: async () => [],
  remove: async () => undefined,
};
const handle = {} as VmHandle;

describe('app layers', () => {
  it('the contract refuses mount points that escape or cover the system, and a mount point twice', () => {
    for (const mount of ['/opt/../etc', 'opt', '/', '/data/x', '/proc', '/a b', '/etc']) {
      assert.equal(AppMount.safeParse({ layer: L1, mount }).success, false, mount);
    }
    assert.equal(AppMount.safeParse({ layer: L1, mount: '/opt/app-1.2_x' }).success, true);
    assert.deepEqual(parseAppSpec('/srv/app:/opt/app'), { dir: '/srv/app', mount: '/opt/app' });
    assert.deepEqual(parseAppSpec('/srv/app'), { dir: '/srv/app', mount: '/app' });
    assert.throws(() => parseAppSpec('/srv/app:/proc/x'), ValidationError);
  });

  it('adds a mount, replaces a layer in place and unplugs the old one, and does nothing for what is there', async () => {
    const { runtime, calls } = fakeRuntime();
    const m = new AppMounter(runtime, layers, log, { fetchMs: 1000, guestMs: 1000 });
    const vm: { id: string; apps?: AppDevice[] } = { id: 'vm-aaaaaaaaaaaa' };
    let persisted = 0;
    await m.apply(vm, handle, [{ layer: L1, mount: '/opt/a' }], async () => void persisted++);
    await m.apply(vm, handle, [{ layer: L2, mount: '/opt/a' }], async () => void persisted++);
    await m.apply(vm, handle, [{ layer: L2, mount: '/opt/a' }], async () => void persisted++);
    assert.deepEqual(vm.apps, [{ slot: 1, layer: L2, mount: '/opt/a' }]);
    assert.deepEqual(calls, [
      `attach 0 app0-${L1.slice(0, 14)}`,
      `/etc/forky/app-mount app0-${L1.slice(0, 14)} /opt/a`,
      `attach 1 app1-${L2.slice(0, 14)}`,
      `/etc/forky/app-mount app1-${L2.slice(0, 14)} /opt/a`,
      `/etc/forky/app-release app0-${L1.slice(0, 14)}`,
      'detach 0',
    ]);
    assert.ok(persisted >= 4, 'every change of the devices is persisted');
  });

  it('refuses too many mounts or no free slot before touching the VM, and unplugs a layer the guest could not mount', async () => {
    const { runtime, calls } = fakeRuntime(/app-mount/);
    const m = new AppMounter(runtime, layers, log, { fetchMs: 1000, guestMs: 1000 });
    const full: AppDevice[] = Array.from({ length: 8 }, (_, slot) => ({ slot, layer: L1, ...(slot < 2 ? { mount: `/m${slot}` } : {}) }));
    const vm = { id: 'vm-aaaaaaaaaaaa', apps: full };
    await assert.rejects(
      m.apply(vm, handle, [{ layer: L2, mount: '/m9' }], async () => undefined),
      CapacityError,
    );
    const five = Array.from({ length: 5 }, (_, i) => ({ layer: L2, mount: `/n${i}` }));
    await assert.rejects(
      m.apply({ id: 'vm-bbbbbbbbbbbb' }, handle, five, async () => undefined),
      ValidationError,
    );
    assert.deepEqual(calls, [], 'nothing reached QEMU or the guest');
    const other: { id: string; apps?: AppDevice[] } = { id: 'vm-cccccccccccc' };
    await assert.rejects(
      m.apply(other, handle, [{ layer: L2, mount: '/x' }], async () => undefined),
      /app-mount .* failed \(exit 2\): no disk/,
    );
    assert.deepEqual(other.apps, [], 'the disk that was not mounted is gone again');
    assert.equal(calls.at(-1), 'detach 0');
  });
});
