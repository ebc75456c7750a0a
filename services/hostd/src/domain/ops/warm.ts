import { newId } from '@forky/base';
import type { Host, WarmMaker } from '../host.js';
import type { VmHandle } from '../ports.js';
import { withRollback } from '../rollback.js';
import type { WarmChild } from '../warm-pool.js';
import { egressOf } from '../records.js';

/** The warm pool's processes: a future child of a snapshot, its own layer made, waiting for state. */
export const warmMaker: WarmMaker = {
  async make(host: Host, snapId: string): Promise<WarmChild<VmHandle>> {
    const { d } = host;
    const snap = host.snap(snapId);
    const image = await d.images.byId(snap.info.profile.imageId, snap.info.image);
    const rec = host.childRecord(newId('vm'), snap, image);
    return withRollback(host.log, { vm: rec.id, warm: true }, async (rb) => {
      rb.push('remove its directory', () => d.records.removeVm({ id: rec.id, ram: rec.ram }));
      await host.filterNetwork(rb, rec.id, egressOf(snap));
      let handle: VmHandle | undefined;
      const top = await host.newLayer(rb, snap.chain.at(-1) as string, snap.diskVirtualSize, async (layer) => {
        rec.chain.push(layer);
        handle = await d.runtime.prepare(host.spec(rec, image), { autostart: true, timeoutMs: d.limits.restoreTimeoutMs });
      });
      if (!handle) throw new Error(`warm process of ${rec.id} was not started`);
      return { id: rec.id, mac: rec.mac, top, handle, exited: handle.exited };
    });
  },

  async discard(host: Host, c: WarmChild<VmHandle>): Promise<void> {
    await host.runtime.destroy(c.handle);
    await host.d.layers.remove(c.top);
    await host.d.network.remove(c.id);
    await host.d.records.removeVm({ id: c.id, ram: { file: '', shared: false } });
  },
};
