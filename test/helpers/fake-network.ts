import type { Egress } from '@forky/contract';
import type { NetworkFilter } from '@forky/hostd/internal';

/** A network filter that only remembers: which VM has which policy, and which devices are bound. */
export class FakeNetworkFilter implements NetworkFilter {
  readonly enforcement = 'nftables' as const;
  readonly policies = new Map<string, Egress>();
  readonly devices = new Map<string, string>();
  /** VMs whose process the test says runs outside its filter (as one started by an older hostd would). */
  readonly outside = new Set<string>();

  async apply(vmId: string, egress: Egress): Promise<void> {
    this.policies.set(vmId, egress);
  }
  scope(): string | undefined {
    return undefined;
  }
  async holds(vmId: string): Promise<boolean> {
    return this.policies.has(vmId) && !this.outside.has(vmId);
  }
  async bindDevice(vmId: string, device: string, _mac: string): Promise<void> {
    this.devices.set(device, vmId);
  }
  async unbindDevice(device: string): Promise<void> {
    this.devices.delete(device);
  }
  async refused(vmId: string): Promise<number | undefined> {
    return this.policies.has(vmId) ? 0 : undefined;
  }
  async remove(vmId: string): Promise<void> {
    this.policies.delete(vmId);
  }
  async sweep(keep: ReadonlySet<string>): Promise<number> {
    let n = 0;
    for (const id of [...this.policies.keys()]) {
      if (keep.has(id)) continue;
      this.policies.delete(id);
      n++;
    }
    return n;
  }
}
