import type { VmAppRequest, VmInfo } from '@forky/contract';
import type { Host } from '../host.js';
import { assertAllowed } from '../state.js';

/** Mounts app layers in a running VM (new mount points, or new layers at old ones). */
export async function applyApps(host: Host, req: VmAppRequest): Promise<VmInfo> {
  await host.vms.get(req.id)?.settling;
  return host.lock.run(req.id, async () => {
    const vm = host.vm(req.id);
    assertAllowed(vm.id, vm.state, 'app');
    await host.apps.apply(vm, host.handle(vm), req.apps, () => host.persist(vm));
    host.log.info({ vm: vm.id, apps: req.apps }, 'app layers mounted');
    return host.info(vm);
  });
}
