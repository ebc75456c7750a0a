import { InvalidStateError } from '@forky/base';
import type { VmInfo, VmNetworkRequest } from '@forky/contract';
import type { Host } from '../host.js';
import { egressOf } from '../records.js';

/**
 * Changes a VM's egress policy: the filter first (a policy this host cannot enforce is refused
 * with nothing changed), then the record, so a restarted hostd and the VM's next snapshot keep it.
 * If the record cannot be written the filter goes back to the old policy.
 */
export function setNetwork(host: Host, req: VmNetworkRequest): Promise<VmInfo> {
  host.vm(req.id);
  return host.lock.run(req.id, async () => {
    const vm = host.vm(req.id);
    if (vm.state === 'destroying' || vm.state === 'destroyed' || vm.state === 'failed') {
      throw new InvalidStateError(`VM ${vm.id} is ${vm.state}: its network policy cannot change`, { id: vm.id });
    }
    const before = egressOf(vm);
    await host.d.network.apply(vm.id, req.network.egress);
    vm.egress = req.network.egress;
    try {
      await host.persist(vm);
    } catch (e) {
      vm.egress = before;
      await host.d.network
        .apply(vm.id, before)
        .catch((err: unknown) => host.log.error({ err, vm: vm.id }, 'could not put the old network policy back'));
      throw e;
    }
    host.log.info({ vm: vm.id, egress: vm.egress }, 'network policy changed');
    return withRefused(host, host.info(vm));
  });
}

/** A VM's info with how many packets its policy has refused (asked of the filter). */
export async function withRefused(host: Host, info: VmInfo): Promise<VmInfo> {
  if (!info.network) return info;
  const refused = await host.d.network.refused(info.id).catch(() => undefined);
  return refused === undefined ? info : { ...info, network: { ...info.network, refused } };
}
